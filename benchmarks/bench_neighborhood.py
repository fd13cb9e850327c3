"""Benchmark of the neighbourhood structure (Algorithm 1): speed against the plain-Python reference,
speed and peak memory at N = 10,000, and label precision of S on CIFAR-10 features when available.

    python benchmarks/bench_neighborhood.py                     # synthetic parts; CIFAR if cached
    python benchmarks/bench_neighborhood.py --features F.npy --labels cifar10   # pooled 60,000 rows
    python benchmarks/bench_neighborhood.py --features F.npy --labels L.npy     # any aligned pair

Writes benchmarks/results/neighborhood.json. Peak memory: ru_maxrss of a child process (the whole
process's high-water mark, interpreter and input features included), with the
peak of Python/numpy allocations during each phase (tracemalloc, above what was allocated before it)
reported beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from _common import CIFAR10_ZIP, FEATURE_CACHE, REPO_ROOT, make_parser, results_path, ru_maxrss_mb, timed, write_results
from bganhash.features.transforms import transform_features
from bganhash.neighborhood import (
    expand_neighborhood,
    knn_cosine,
    knn_label_precision_curve,
    label_precision,
    positives_per_image,
)

REPEATS = 3  # ours: best of 3; the reference (seconds per run) runs once


def load_test_references() -> Any:
    """The plain-Python reference lives in the test file, so that the test and this benchmark share it."""
    spec = importlib.util.spec_from_file_location("test_neighborhood", REPO_ROOT / "tests" / "test_neighborhood.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clustered_features(n: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian clusters (about 50 images each) in `dim` dimensions, float32."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32)
    features = rng.standard_normal((n, dim), dtype=np.float32)
    features *= 1.2
    features += centers[rng.integers(0, len(centers), n)]
    return features


def against_reference(n: int, k1: int, k2: int, dim: int) -> dict[str, Any]:
    """Time the reference and ours side by side on exact-tie lattice features; check identical output."""
    reference = load_test_references()
    features = reference.lattice_features(np.random.default_rng(0), n, n // 20, dim // 16, dim, 256)
    reference_knn_s, _, reference_knn = timed(reference.reference_knn, features, k1)
    reference_expand_s, _, reference_S = timed(reference.reference_expand, reference_knn, k2)
    knn_s, _, knn = timed(knn_cosine, features, k1, repeats=REPEATS)
    expand_s, _, S = timed(expand_neighborhood, knn, k2, repeats=REPEATS)
    row = {
        "n": n, "k1": k1, "k2": k2, "dim": dim,
        "features": f"clustered lattice {{-1,0,1}}^{dim}, 256 non-zeros (exact cosines, many ties)",
        "reference_knn_s": reference_knn_s, "reference_expand_s": reference_expand_s,
        "ours_knn_s": knn_s, "ours_expand_s": expand_s,
        "identical_knn": bool(np.array_equal(knn, reference_knn)),
        "identical_S": bool(np.array_equal(S.toarray(), reference_S)),
        "speedup_total": (reference_knn_s + reference_expand_s) / (knn_s + expand_s),
        "speedup_expand": reference_expand_s / expand_s,
        "speedup_knn": reference_knn_s / knn_s,
        "positives_per_image": positives_per_image(S),
    }  # fmt: skip
    print(
        f"[reference, N={n}] reference {reference_knn_s:.2f} s K-NN + {reference_expand_s:.2f} s expansion; "
        f"ours {knn_s:.3f} s + {expand_s:.3f} s; speed-up {row['speedup_total']:.0f}x overall, "
        f"{row['speedup_expand']:.0f}x expansion, {row['speedup_knn']:.0f}x K-NN; "
        f"identical K-NN {row['identical_knn']}, identical S {row['identical_S']}"
    )
    return row


def child_run(n: int, k1: int, k2: int, dim: int) -> None:
    """Measure ours at size n in this (child) process; print one JSON line."""
    features = clustered_features(n, dim, seed=1)
    knn_s, _, knn = timed(knn_cosine, features, k1, repeats=REPEATS)
    expand_s, _, S = timed(expand_neighborhood, knn, k2, repeats=REPEATS)
    tracemalloc.start()
    knn_cosine(features, k1)
    knn_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    expand_neighborhood(knn, k2)
    expand_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({
        "n": n, "k1": k1, "k2": k2, "dim": dim, "features": "clustered Gaussian, float32",
        "knn_s": knn_s, "expand_s": expand_s, "total_s": knn_s + expand_s,
        "knn_peak_mb": knn_peak / 2**20, "expand_peak_mb": expand_peak / 2**20,
        "input_features_mb": features.nbytes / 2**20,
        "rss_peak_mb": ru_maxrss_mb(),
        "S_nnz": int(S.nnz), "positives_per_image": positives_per_image(S),
    }))  # fmt: skip


def at_scale(n: int, k1: int, k2: int, dim: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(n), "--k1", str(k1), "--k2", str(k2), "--dim", str(dim)]
    row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(
        f"[scale, N={n}, K1={k1}, K2={k2}, d={dim}] K-NN {row['knn_s']:.2f} s, expansion {row['expand_s']:.2f} s; "
        f"peak allocated (tracemalloc) K-NN {row['knn_peak_mb']:.0f} MB, expansion {row['expand_peak_mb']:.0f} MB "
        f"(input {row['input_features_mb']:.0f} MB); process peak RSS {row['rss_peak_mb']:.0f} MB; "
        f"{row['positives_per_image']:.0f} positives/image"
    )
    return row


def sqrt_l2_center(features: np.ndarray) -> np.ndarray:
    """Signed square root, L2-normalise each row, subtract the mean row (the library's transform)."""
    return transform_features(features, "sqrt_l2_center")


def labelled_features(features_path: Path, labels_arg: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Training features and labels: the paper split of pooled CIFAR-10 rows, or an aligned .npy pair."""
    features = np.load(features_path, mmap_mode="r")
    if labels_arg != "cifar10":
        return np.asarray(features, dtype=np.float32), np.load(labels_arg), f"{features_path.name} + {labels_arg}"
    from bganhash.datasets.cifar10 import load_cifar10
    from bganhash.datasets.splits import protocol_split

    dataset = load_cifar10(CIFAR10_ZIP)
    if len(features) != len(dataset):
        raise SystemExit(f"{features_path} has {len(features)} rows; the pooled CIFAR-10 has {len(dataset)}")
    train = protocol_split(dataset, seed=0).train
    description = f"{features_path.name}, CIFAR-10 (JPEG copy) paper split seed 0, {len(train)} training images"
    return np.asarray(features[train], dtype=np.float32), dataset.labels[train], description


def rows_short_of_overlaps(lists: np.ndarray, k2: int) -> float:
    """Fraction of images with fewer than k2 images of non-zero overlap: Algorithm 1, taken literally,
    completes their K2 with the smallest-index images of zero overlap."""
    n = lists.shape[0]
    row_starts = np.arange(0, lists.size + 1, lists.shape[1])
    membership = sp.csr_matrix((np.ones(lists.size), lists.ravel(), row_starts), (n, n))
    return float((np.diff((membership @ membership.T).tocsr().indptr) < k2).mean())


def label_quality(features: np.ndarray, labels: np.ndarray, settings: list[tuple[int, int]], tag: str) -> list[dict]:
    rows = []
    for post in ("plain", "sqrt-l2-centre"):
        X = features if post == "plain" else sqrt_l2_center(features)
        knn_s, _, knn = timed(knn_cosine, X, max(k1 for k1, _ in settings))
        for k1, k2 in settings:
            expand_s, _, S = timed(expand_neighborhood, knn[:, : k1 + 1], k2)
            row = {
                "features": post, "k1": k1, "k2": k2, "knn_s": knn_s, "expand_s": expand_s,
                "knn_precision": label_precision(knn[:, : k1 + 1], labels),
                "S_precision": label_precision(S, labels), "positives_per_image": positives_per_image(S),
                "rows_short_of_overlaps": rows_short_of_overlaps(knn[:, : k1 + 1], k2),
            }  # fmt: skip
            rows.append(row)
            print(
                f"[{tag}, {post}, K1={k1}, K2={k2}] KNN@{k1} precision {row['knn_precision']:.3f}; "
                f"S precision {row['S_precision']:.3f}, {row['positives_per_image']:.0f} positives/image; "
                f"{row['rows_short_of_overlaps']:.2%} of rows short of K2 overlapping images"
            )
    return rows


def find_cached_features() -> Path | None:
    """A cached pooled CIFAR-10 feature file (its JSON sidecar says cifar10, 60,000 rows), if any."""
    for sidecar in sorted(FEATURE_CACHE.glob("*.json")) if FEATURE_CACHE.is_dir() else []:
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        array = sidecar.with_suffix(".npy")
        if meta.get("dataset") == "cifar10" and meta.get("shape", [0])[0] == 60000 and array.is_file():
            return array
    return None


def main() -> None:
    parser = make_parser(__doc__, results_path("neighborhood"), flag="--out", full_doc=True)
    parser.add_argument("--n-reference", type=int, default=2000, help="N of the side-by-side comparison")
    parser.add_argument("--n", type=int, default=10000, help="N of the timing and memory run")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=30)
    parser.add_argument("--dim", type=int, default=1280, help="feature dimension of the synthetic features")
    parser.add_argument("--features", type=Path, help="a .npy of image features (default: first cached file)")
    parser.add_argument("--labels", default="cifar10", help="'cifar10' (pooled rows, paper split) or a .npy")
    parser.add_argument("--curve", default="5,10,20,30,50", help="K1 values of the Figure-2 curve ('' skips)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args.child, args.k1, args.k2, args.dim)
        return

    results: dict[str, Any] = {
        "peak_memory": "tracemalloc peak per phase, and ru_maxrss of the child process",
        "timing": f"ours best of {REPEATS}, reference once", "load_average_at_start": os.getloadavg(),
    }  # fmt: skip
    if not args.skip_reference:
        results["reference_comparison"] = against_reference(args.n_reference, args.k1, args.k2, args.dim)
    results["scale"] = at_scale(args.n, args.k1, args.k2, args.dim)
    features_path = args.features or find_cached_features()
    if features_path is None:
        print(f"[CIFAR-10] skipped: no --features given and no pooled CIFAR-10 .npy under {FEATURE_CACHE}")
        results["labelled"] = None
    else:
        features, labels, description = labelled_features(features_path, args.labels)
        tag = "CIFAR-10" if args.labels == "cifar10" else features_path.stem[:24]
        rows = label_quality(features, labels, [(20, 30), (50, 50)], tag)
        results["labelled"] = {"source": description, "rows": rows}
        if args.curve:
            k1_values = [int(value) for value in args.curve.split(",")]
            curve = knn_label_precision_curve(sqrt_l2_center(features), labels, k1_values, args.k2)
            results["labelled"]["figure2_curve_sqrt_l2_centre"] = curve
            print(f"[{tag}, Figure 2, sqrt-l2-centre, K2={args.k2}] {json.dumps(curve)}")
    results["load_average_at_end"] = os.getloadavg()
    write_results(args.out, results)


if __name__ == "__main__":
    main()
