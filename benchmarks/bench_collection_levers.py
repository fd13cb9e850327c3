"""What each lever does to BGAN's codes on collections: precision@10, mAP@all and distinct codes, Hamming only.

Collections of N images drawn from CIFAR-10's training folder, 500 other training images as queries (the
same draw as bench_collections.py), default features from the feature cache, 64 bits unless --bits. Each
variant is BGAN as `bganhash index` trains it (the whole model, with images) with the given overrides on
top of the collection's neighbourhood size; ITQ is the reference. Choices are made on these numbers only.

    python benchmarks/bench_collection_levers.py --sizes 1000 2000 \\
        --variant base='{}' --variant cos05='{"cosine_target_weight": 0.5}'
"""

from __future__ import annotations

import json
import time

import numpy as np

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bench_collections import precision_at_10
from bganhash.bgan.estimator import BGANHasher
from bganhash.collection import collection_bgan_settings
from bganhash.datasets import load_dataset
from bganhash.features.extract import extract_features
from bganhash.hashers import ITQ
from bganhash.index import Index
from bganhash.metrics import mean_average_precision


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, overrides = text.partition("=")
    return name, json.loads(overrides or "{}")


def score(hasher, features, labels, collection, queries, n_bits) -> dict:
    codes, query_codes = hasher.encode(features[collection]), hasher.encode(features[queries])
    index = Index(n_bits)
    index.add(codes)
    _, ranked = index.search(query_codes, 10)
    return {"p10_hamming": round(precision_at_10(ranked, labels[queries], labels[collection]), 4),
            "map_all": round(float(mean_average_precision(query_codes, codes, labels[queries], labels[collection])), 4),
            "distinct_codes": int(len(np.unique(codes, axis=0)))}


def main() -> None:
    parser = make_parser(__doc__, results_path("collection_levers"), full_doc=True)
    parser.add_argument("--data", default=CIFAR10_ZIP)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", type=parse_variant, default=[],
                        help="NAME=JSON overrides of BGAN's config (repeatable); default: base={}")
    args = parser.parse_args()
    variants = args.variant or [("base", {})]
    dataset = load_dataset("cifar10", args.data)
    features = extract_features(dataset)
    training = np.flatnonzero([location.startswith("train/") for location in dataset.locations])
    order = np.random.default_rng(0).permutation(training)
    queries, pool = order[: args.queries], order[args.queries:]
    labels, images = dataset.labels, dataset.to_array(size=32)
    rows = []
    for n_images in args.sizes:
        collection = np.sort(pool[:n_images])
        reference = score(ITQ(args.bits, random_state=0).fit(features[collection]), features, labels, collection,
                          queries, args.bits)
        rows.append({"variant": "itq", "n_images": n_images, **reference})
        print(rows[-1], flush=True)
        for name, overrides in variants:
            for seed in args.seeds:
                started = time.perf_counter()
                params = {**collection_bgan_settings(n_images), **overrides}
                hasher = BGANHasher(args.bits, random_state=seed, **params)
                hasher.fit(features[collection], images=images[collection], progress=False)
                row = {"variant": name, "overrides": overrides, "seed": seed, "n_images": n_images,
                       "fit_s": round(time.perf_counter() - started, 1),
                       **score(hasher, features, labels, collection, queries, args.bits)}
                row["p10_minus_itq"] = round(row["p10_hamming"] - reference["p10_hamming"], 4)
                rows.append(row)
                print(rows[-1], flush=True)
    write_results(args.output, {"rows": rows, "bits": args.bits, "queries": args.queries,
                                "data": "CIFAR-10 (JPEG copy), training folder only"})


if __name__ == "__main__":
    main()
