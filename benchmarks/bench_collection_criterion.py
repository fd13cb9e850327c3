"""Can a collection tell, without labels, which BGAN training gives the better top of the list?

For a collection drawn from CIFAR-10's training folder (500 other training images are the queries), BGAN is
trained as `bganhash index` trains it (on a sample of at most 10,000; l_N and the bit-spread term from
10,000 images on) under several seeds; after every epoch the benchmark scores precision@10 by class of the
queries' Hamming top ten, and a label-free criterion the collection could compute itself: for 1,000 of its
images outside the training sample, the mean cosine similarity (L2-normalised features) between the image
and its Hamming top ten among the others. If the criterion ranks epochs and seeds as precision@10 does, it
could choose when to stop or which seed to keep.

    python benchmarks/bench_collection_criterion.py --size 49500 --bits 32 --seeds 0 1 2 3

Writes benchmarks/results/collection_criterion.json.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.bgan.estimator import BGANHasher, feature_codes
from bganhash.collection import collection_bgan_settings, training_rows
from bganhash.datasets import load_dataset
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features
from bganhash.index import Index


def epoch_scorer(features, labels, collection, queries, held_out, n_bits, history):
    """A BGANHasher validation callback recording precision@10 and the label-free criterion per epoch."""
    unit = transform_features(features[collection], "l2")

    def make(_hasher, _validation, config, center, _n_features):
        method = config.neighborhood.feature_transform
        database = transform_features(features[collection], method, center)
        query_inputs = transform_features(features[queries], method, center)

        def score(networks) -> float:
            codes, query_codes = feature_codes(networks, database), feature_codes(networks, query_inputs)
            index = Index(n_bits)
            index.add(codes)
            _, ranked = index.search(query_codes, 10)
            p10 = float((labels[collection][ranked] == labels[queries][:, None]).mean())
            _, around = index.search(codes[held_out], 11)
            others = np.array([[j for j in row if j != own][:10] for row, own in zip(around, held_out)])
            cosine = float(np.einsum("nd,nkd->nk", unit[held_out], unit[others]).mean())
            history.append({"p10": p10, "cosine_top10": cosine, "distinct_codes": int(len(np.unique(codes, axis=0)))})
            return p10

        return score

    return make


def correlation(epochs: list[dict]) -> float:
    """Pearson correlation of precision@10 and the criterion over `epochs`."""
    return float(np.corrcoef([e["p10"] for e in epochs], [e["cosine_top10"] for e in epochs])[0, 1])


def main() -> None:
    parser = make_parser(__doc__, results_path("collection_criterion"))
    parser.add_argument("--data", default=CIFAR10_ZIP)
    parser.add_argument("--size", type=int, default=49500)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--max-train", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", args.data)
    features = extract_features(dataset, FeatureConfig())
    training = np.flatnonzero([location.startswith("train/") for location in dataset.locations])
    order = np.random.default_rng(0).permutation(training)
    queries, collection = order[:500], np.sort(order[500:][: args.size])
    runs = []
    for seed in args.seeds:
        train = training_rows(len(collection), args.max_train, seed)
        outside = np.setdiff1d(np.arange(len(collection)), train)
        held_out = np.random.default_rng(seed).choice(outside if len(outside) else np.arange(len(collection)),
                                                      min(1000, len(collection)), replace=False)
        history: list[dict] = []
        hasher = BGANHasher(args.bits, random_state=seed, **collection_bgan_settings(len(train)))
        # this hasher's own per-epoch scorer (shadowing the method on the instance, not on the class)
        hasher._validation_scorer = functools.partial(
            epoch_scorer(features, dataset.labels, collection, queries, held_out, args.bits, history), hasher)
        started = time.perf_counter()
        needs_images = hasher.resolved_config().loss.needs_images
        hasher.fit(features[collection][train], images=dataset.to_array(collection[train]) if needs_images else None,
                   progress=False, validation=((), (), (), ()))
        runs.append({"seed": seed, "fit_s": round(time.perf_counter() - started, 1), "epochs": history})
        last = history[-1]
        print(f"seed {seed}: final precision@10 {last['p10']:.3f}, cosine of the Hamming top ten "
              f"{last['cosine_top10']:.4f}, {last['distinct_codes']} distinct codes", flush=True)
    finals = np.array([[run["epochs"][-1]["p10"], run["epochs"][-1]["cosine_top10"]] for run in runs])
    across_epochs = [correlation(run["epochs"]) for run in runs]
    late = [correlation(run["epochs"][-12:]) for run in runs]
    across_seeds = float(np.corrcoef(finals[:, 0], finals[:, 1])[0, 1]) if len(runs) > 2 else None
    print(f"correlation of the criterion with precision@10: over all epochs {np.round(across_epochs, 2)}, "
          f"over the last 12 epochs {np.round(late, 2)}, over the seeds' final models {across_seeds}")
    write_results(args.output, {"benchmark": "label-free criterion against precision@10 on a collection",
                                "size": args.size, "bits": args.bits, "runs": runs,
                                "correlation_all_epochs": across_epochs, "correlation_last_12_epochs": late,
                                "correlation_across_seeds": across_seeds})


if __name__ == "__main__":
    main()
