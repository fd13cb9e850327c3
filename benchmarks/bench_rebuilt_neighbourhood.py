"""A neighbourhood rebuilt from a trained BGAN, as a lever (issue 14): judged on the validation split.

For each seed: train BGAN (the `cpu` preset) on the validation split's 9,000 training images, rebuild S by
Algorithm 1 (the same K1 = K2 = 50) on what the trained head computes for those images (its hidden layer,
and tanh of its real-valued codes z), train a second BGAN from scratch on that S, and score both by mAP@all
of the validation queries. KNN@20 label precision of each representation is reported beside.

    python benchmarks/bench_rebuilt_neighbourhood.py --features efficientnet_lite2@260 --bits 12 --seeds 0 1

Writes benchmarks/results/rebuilt_neighbourhood.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bench_feature_choice import feature_choice, score
from bganhash.bgan.estimator import BGANHasher
from bganhash.datasets import load_dataset, protocol_split
from bganhash.datasets.splits import validation_split
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features
from bganhash.neighborhood import knn_cosine, label_precision, neighborhood_structure


def learned_representations(hasher: BGANHasher, features: np.ndarray) -> dict[str, np.ndarray]:
    """The trained head's hidden layer and tanh(z) for `features`."""
    inputs = torch.from_numpy(transform_features(features, hasher.config_["neighborhood"]["feature_transform"],
                                                 hasher.input_center_))
    with torch.no_grad():
        hidden = hasher.networks_.encoder.eval()(inputs)
        return {"hidden": hidden.numpy(), "z": torch.tanh(hasher.networks_.hash_layer.project(hidden)).numpy()}


def main() -> None:
    parser = make_parser(__doc__, results_path("rebuilt_neighbourhood"))
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--features", default="efficientnet_lite2@260")
    parser.add_argument("--bits", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    dataset = load_dataset("cifar10", args.data)
    split = validation_split(protocol_split(dataset, 0), 1000)
    features, labels = extract_features(dataset, feature_choice(args.features)), dataset.labels
    train, images = features[split.train], dataset.to_array(split.train)
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        hasher = BGANHasher(args.bits, preset="cpu", random_state=seed).fit(train, images=images, progress=False)
        row = {"seed": seed, "default": score(hasher, features, labels, split),
               "fit_s": round(time.perf_counter() - started, 1)}
        for name, representation in learned_representations(hasher, train).items():
            row[f"knn20_{name}"] = label_precision(knn_cosine(representation, 20), labels[split.train])
            rebuilt = neighborhood_structure(representation, k1=50, k2=50)
            second = BGANHasher(args.bits, preset="cpu", random_state=seed)
            second.fit(train, images=images, neighborhood=rebuilt, progress=False)
            row[f"rebuilt_{name}"] = score(second, features, labels, split)
        print(row, flush=True)
        rows.append(row)
    write_results(args.output, {"benchmark": "BGAN on a neighbourhood rebuilt from a trained BGAN, validation split",
                                "features": args.features, "bits": args.bits, "rows": rows})


if __name__ == "__main__":
    main()
