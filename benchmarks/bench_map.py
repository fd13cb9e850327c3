"""mAP@all end to end (distances + ranking + AP): bganhash.metrics against the straightforward way.

The straightforward way is a float32 matrix product of the {-1,+1} codes for the distances, then
`np.argsort(kind="stable")` and AP per query. Both rank ties by database index and must agree.
Codes are clustered (class centres with bits flipped at random) so that mAP is not trivial.

    python benchmarks/bench_map.py            # 1,000 queries x 59,000 database codes, 64 bits
"""

from __future__ import annotations

import os
import statistics

import numpy as np

from _common import make_parser, results_path, timed, write_results
from bganhash._system import usable_cpus
from bganhash.metrics import mean_average_precision


def clustered_codes(rng: np.random.Generator, n: int, n_bits: int, centers: np.ndarray, flip: float):
    """n {-1,+1} codes: a random class centre each, every bit flipped with probability `flip`."""
    labels = rng.integers(0, len(centers), size=n)
    flips = np.where(rng.random((n, n_bits)) < flip, -1, 1)
    return (centers[labels] * flips).astype(np.int8), labels


def reference_map(query_codes: np.ndarray, database_codes: np.ndarray, query_labels, database_labels) -> float:
    """mAP@all the straightforward way: float matrix product, stable argsort and AP per query."""
    n_bits = query_codes.shape[1]
    distances = (n_bits - query_codes.astype(np.float32) @ database_codes.astype(np.float32).T) / 2
    average_precisions = []
    for row, label in zip(distances, query_labels):
        relevant = database_labels[np.argsort(row, kind="stable")] == label
        hit_ranks = np.flatnonzero(relevant) + 1
        hits = np.arange(1, hit_ranks.size + 1)
        average_precisions.append(np.mean(hits / hit_ranks) if hit_ranks.size else 0.0)
    return float(np.mean(average_precisions))


def main() -> None:
    parser = make_parser(__doc__, results_path("map"))
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--n-database", type=int, default=59000)
    parser.add_argument("--n-bits", type=int, default=64)
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--flip", type=float, default=0.3, help="probability of flipping a bit of the class centre")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of ours (best and median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centers = np.where(rng.random((args.n_classes, args.n_bits)) < 0.5, -1, 1)
    query_codes, query_labels = clustered_codes(rng, args.n_queries, args.n_bits, centers, args.flip)
    database_codes, database_labels = clustered_codes(rng, args.n_database, args.n_bits, centers, args.flip)
    problem = (query_codes, database_codes, query_labels, database_labels)

    load_before = os.getloadavg()
    ours = [timed(mean_average_precision, *problem) for _ in range(args.repeats)]
    reference_s, reference_cpu_s, reference = timed(reference_map, *problem)
    load_after = os.getloadavg()
    ours_map = ours[0].result
    if abs(ours_map - reference) > 1e-9:
        raise SystemExit(f"mAP differs: ours {ours_map!r}, reference {reference!r}")

    walls = [timing.seconds for timing in ours]
    document = {
        "benchmark": "mAP@all, Hamming ranking with ties by database index, end to end",
        "n_queries": args.n_queries,
        "n_database": args.n_database,
        "n_bits": args.n_bits,
        "n_classes": args.n_classes,
        "flip": args.flip,
        "map": ours_map,
        "reference_map": reference,
        "ours_s": min(walls),
        "ours_median_s": statistics.median(walls),
        "ours_cpu_s": min(timing.cpu_seconds for timing in ours),
        "reference_s": reference_s,
        "reference_cpu_s": reference_cpu_s,
        "ratio": reference_s / min(walls),
        "repeats": args.repeats,
        "threads": usable_cpus(),
        "load_average_before": load_before[0],
        "load_average_after": load_after[0],
    }
    for key in ("map", "ours_s", "ours_median_s", "ours_cpu_s", "reference_s", "ratio", "load_average_before"):
        value = document[key]
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    write_results(args.output, document)


if __name__ == "__main__":
    main()
