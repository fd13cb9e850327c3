"""Search latency and bytes per image on 1,000,000 images: Hamming only, two-stage, exhaustive cosine.

Usage: python benchmarks/bench_search_scale.py [--images 1000000] [--queries 200] [--bits 64]

The database is made from CIFAR-10's cached features (EfficientNet-Lite0, 1280-d): each of the N rows is a
training image's features plus Gaussian noise (sd 0.1 of the features' own sd), so the codes and vectors
have the distribution of real ones. ITQ (fitted on 10,000 training images) gives the codes; the collection's
FeatureReducer (128 float16 values) gives the stored vectors. One query at a time, as a user searches:
- hamming: the exact binary index (faiss IndexBinaryFlat when installed), top 10;
- two-stage: its top candidates re-ranked by cosine on the stored vectors (bganhash's default count for
  N images, `default_candidates`: 1,000 at 1,000,000; --candidates overrides);
- exhaustive: cosine against every row's full float32 features.
Writes benchmarks/results/search_scale.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.datasets import load_dataset
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features
from bganhash.hashers import ITQ
from bganhash.index import Index
from bganhash.index.rerank import FeatureReducer, default_candidates, rerank


def synthetic_database(features: np.ndarray, n_images: int, seed: int, chunk: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 0.1 * features.std(axis=0, keepdims=True)
    database = np.empty((n_images, features.shape[1]), np.float32)
    for start in range(0, n_images, chunk):
        rows = rng.integers(0, len(features), min(chunk, n_images - start))
        noise = rng.standard_normal((len(rows), features.shape[1]), dtype=np.float32) * scale
        database[start:start + len(rows)] = features[rows] + noise
    return database


def percentiles(milliseconds: list[float]) -> dict[str, float]:
    values = np.asarray(milliseconds)
    return {"p50": round(float(np.percentile(values, 50)), 3), "p99": round(float(np.percentile(values, 99)), 3)}


def time_each(function, queries) -> list[float]:
    function(queries[0])  # warm-up
    times = []
    for query in queries:
        started = time.perf_counter()
        function(query)
        times.append(1000 * (time.perf_counter() - started))
    return times


def main() -> None:
    parser = make_parser(__doc__, results_path("search_scale"), flag="--out", full_doc=True)
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=None, help="default: what a collection of --images uses")
    parser.add_argument("--bits", type=int, default=64)
    args = parser.parse_args()
    dataset = load_dataset("cifar10", args.data)
    features = extract_features(dataset)
    training = np.flatnonzero([location.startswith("train/") for location in dataset.locations])
    queries = features[np.flatnonzero([location.startswith("test/") for location in dataset.locations])][: args.queries]
    sample = features[np.random.default_rng(0).choice(training, 10_000, replace=False)]
    hasher, reducer = ITQ(args.bits, random_state=0).fit(sample), FeatureReducer.fit(sample)
    database = synthetic_database(features[training], args.images, seed=1)
    print(f"database {database.shape}", flush=True)
    index = Index(args.bits)
    vectors = np.empty((args.images, reducer.dimensions), np.float16)
    for start in range(0, args.images, 100_000):
        block = database[start:start + 100_000]
        index.add(hasher.encode(block))
        vectors[start:start + len(block)] = reducer.reduce(block)
    for start in range(0, args.images, 100_000):  # unit rows in place: the float32 features' own bytes
        block = database[start:start + 100_000]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    unit = database
    query_codes, query_vectors = hasher.encode(queries), reducer.reduce(queries)
    query_unit = transform_features(queries, "l2")
    rows = list(range(len(queries)))
    candidates = args.candidates or default_candidates(args.images)

    def hamming(row: int):
        return index.search(query_codes[row:row + 1], 10)

    def two_stage(row: int):
        distances, ids = index.search(query_codes[row:row + 1], candidates)
        return rerank(distances, ids, query_vectors[row:row + 1], vectors.__getitem__, 10)

    def exhaustive(row: int):
        scores = unit @ query_unit[row]
        return np.argpartition(-scores, 10)[:10]

    results = {}
    for name, function, stored in (("hamming", hamming, args.bits // 8),
                                   ("two_stage", two_stage, args.bits // 8 + 2 * reducer.dimensions),
                                   ("exhaustive_cosine", exhaustive, 4 * features.shape[1])):
        results[name] = {"latency_ms": percentiles(time_each(function, rows)), "bytes_per_image": stored,
                         "memory_mb_at_n": round(stored * args.images / 2**20, 1)}
        print(name, results[name], flush=True)
    write_results(args.out, {"images": args.images, "bits": args.bits, "queries": len(rows),
                             "candidates": candidates, "engine": index.engine, "results": results})


if __name__ == "__main__":
    main()
