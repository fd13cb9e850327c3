"""Search quality on collections drawn from CIFAR-10's training folder: Hamming only against two-stage search.

Collections of N training images (500 other training images are the queries), the default features
(EfficientNet-Lite0 at 224 px, from the feature cache), hashers trained as `bganhash index` trains them
(ITQ; BGAN with the collection's K; both, and the re-ranking reducer, on a random sample of at most
--max-train of the collection, as `index --max-train` does), 64 bits, under each of --seeds. For each:
precision@10 by class and mAP@all of the Hamming
ranking (ties by insertion order), precision@10 after re-ranking the C nearest codes by cosine similarity of
the stored compact features (d float16 values per image, as collections store them), exhaustive cosine
search on the full features, mAP@all after re-ranking (the C re-ranked first, the Hamming order after), and
the number of distinct codes.

    python benchmarks/bench_collections.py --sizes 300 2000 10000 [--seeds 0 1 2]
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.collection import BuildConfig, collection_bgan_settings, training_rows
from bganhash.datasets import load_dataset
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features
from bganhash.hashers import ITQ
from bganhash.index import Index
from bganhash.index.rerank import FeatureReducer, rerank
from bganhash.metrics import mean_average_precision


def precision_at_10(ranked_ids: np.ndarray, query_labels: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[ranked_ids[:, :10]] == query_labels[:, None]).mean())


def hasher_for(method: str, n_bits: int, n_train: int, seed: int, bgan_overrides: dict | None = None):
    if method == "itq":
        return ITQ(n_bits, random_state=seed)
    return BGANHasher(n_bits, random_state=seed, **{**collection_bgan_settings(n_train), **(bgan_overrides or {})})


def average_precision_of_rankings(ranked: np.ndarray, query_labels: np.ndarray, labels: np.ndarray) -> float:
    """mAP of whole rankings (one row of collection positions per query), relevance by class."""
    relevant = labels[ranked] == query_labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, ranked.shape[1] + 1)
    counts = relevant.sum(1)
    return float(np.mean(np.where(counts > 0, (precision * relevant).sum(1) / np.maximum(counts, 1), 0.0)))


def evaluate(method, n_bits, seed, features, images, labels, collection, queries, dimensions, candidates,
             max_train, bgan_overrides=None) -> dict:
    started = time.perf_counter()
    train = collection[training_rows(len(collection), max_train, seed)]
    hasher = hasher_for(method, n_bits, len(train), seed, bgan_overrides)
    fit = {"images": images[train], "progress": False} if method == "bgan" else {}
    hasher.fit(features[train], **fit)
    seconds = time.perf_counter() - started
    codes, query_codes = hasher.encode(features[collection]), hasher.encode(features[queries])
    index = Index(n_bits)
    index.add(codes)
    collection_labels, query_labels = labels[collection], labels[queries]
    distances, ranked = index.search(query_codes, len(collection))  # the whole Hamming ranking
    row = {"method": method, "n_images": len(collection), "n_train": len(train), "bits": n_bits, "seed": seed,
           "fit_s": round(seconds, 1), "distinct_codes": int(len(np.unique(codes, axis=0))),
           "p10_hamming": precision_at_10(ranked, query_labels, collection_labels),
           "map_all_hamming": float(mean_average_precision(query_codes, codes, query_labels, collection_labels))}
    for d in dimensions:
        reducer = FeatureReducer.fit(features[train], d)
        stored, reduced_queries = reducer.reduce(features[collection]), reducer.reduce(features[queries])
        for c in candidates:
            _, reranked, _ = rerank(distances[:, :c], ranked[:, :c], reduced_queries, stored.__getitem__, c)
            row[f"p10_rerank_d{d}_c{c}"] = precision_at_10(reranked[:, :10], query_labels, collection_labels)
            whole = np.concatenate([reranked, ranked[:, c:]], axis=1)
            row[f"map_all_rerank_d{d}_c{c}"] = average_precision_of_rankings(whole, query_labels, collection_labels)
    return row


def main() -> None:
    parser = make_parser(__doc__, results_path("collections"))
    parser.add_argument("--data", default=CIFAR10_ZIP)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 2000, 10000])
    parser.add_argument("--bits", type=int, nargs="+", default=[64])
    parser.add_argument("--methods", nargs="+", default=["itq", "bgan"])
    parser.add_argument("--dimensions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-train", type=int, default=BuildConfig().max_train)
    parser.add_argument("--bgan-overrides", type=json.loads, default={},
                        help="JSON object of BGAN settings on top of the collection's (levers), e.g. "
                             "'{\"bit_spread_weight\": 2}'")
    args = parser.parse_args()

    dataset = load_dataset("cifar10", args.data)
    feature_config = FeatureConfig()  # the default, as `bganhash index` extracts (bf16 where the CPU has it)
    features = extract_features(dataset, feature_config)
    training = np.flatnonzero([location.startswith("train/") for location in dataset.locations])
    order = np.random.default_rng(0).permutation(training)
    queries, pool = order[: args.queries], order[args.queries:]
    labels = dataset.labels
    images = dataset.to_array(size=32)
    rows = []
    for n_images in args.sizes:
        collection = np.sort(pool[:n_images])
        unit = transform_features(features[collection], "l2")
        exhaustive = np.argsort(-(transform_features(features[queries], "l2") @ unit.T), axis=1, kind="stable")
        exhaustive_p10 = precision_at_10(exhaustive, labels[queries], labels[collection])
        for n_bits in args.bits:
            for seed in args.seeds:
                for method in args.methods:
                    row = evaluate(method, n_bits, seed, features, images, labels, collection, queries,
                                   args.dimensions, args.candidates, args.max_train, args.bgan_overrides)
                    row["p10_exhaustive_cosine"] = exhaustive_p10
                    rows.append(row)
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    write_results(args.output, {"rows": rows, "queries": args.queries, "seeds": args.seeds,
                                "max_train": args.max_train, "bgan_overrides": args.bgan_overrides,
                                "data": "CIFAR-10 (JPEG copy), training folder only",
                                "features": asdict(feature_config)})


if __name__ == "__main__":
    main()
