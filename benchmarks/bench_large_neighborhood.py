"""Large-N neighbourhood structure (issue 6): faiss IVF K-NN plus the blocked Algorithm 1 at
N = 100,000 and 1,000,000, with time, peak memory, and the K-NN recall against exact search.

    python benchmarks/bench_large_neighborhood.py                    # N = 100,000 and 1,000,000
    python benchmarks/bench_large_neighborhood.py --sizes 20000      # a smoke run
    python benchmarks/bench_large_neighborhood.py --nprobe 8 16 32   # the recall / time trade-off

Features: the cached CIFAR-10 EfficientNet-Lite0 features (60,000 x 1280), transformed as BGAN's
K-NN sees them (sqrt_l2_center), projected on their top `--dim` principal components, then
replicated with Gaussian noise to N rows (each source image about N / 60,000 times): clustered like
real features, and small enough that 1,000,000 rows (1 GB at 256-d) leave room for S in 8 GB.
Without the cache, clustered Gaussian features of the same shape stand in (said in the output).
The source rows are made once; each size then runs in a fresh child process, so its peak RSS
(VmHWM) is that run's: the interpreter, the N input rows, the faiss index, the lists and S.
Writes benchmarks/results/large_neighborhood.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import FEATURE_CACHE, make_parser, peak_rss_mb, results_path, timed, write_results
from bganhash.features.transforms import transform_features
from bganhash.neighborhood import estimate_knn_recall, expand_neighborhood, knn_cosine, positives_per_image

NOISE = 0.5  # noise standard deviation, as a fraction of each principal component's own


def source_features(dim: int) -> tuple[np.ndarray, str]:
    """The 60,000 CIFAR-10 features on their top `dim` principal components, or a Gaussian stand-in."""
    cached = sorted(FEATURE_CACHE.glob("*-efficientnet_lite0-128-*.npy"), key=lambda p: p.stat().st_size)
    full = [p for p in cached if np.load(p, mmap_mode="r").shape[0] == 60_000]
    if not full:
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((1200, dim), dtype=np.float32)
        return centers[rng.integers(0, 1200, 60_000)] + 0.5 * rng.standard_normal((60_000, dim), dtype=np.float32), \
            "clustered Gaussian stand-in (no cached CIFAR-10 features found)"
    rows = transform_features(np.load(full[-1]).astype(np.float32), "sqrt_l2_center")
    _, singular, components = np.linalg.svd(rows[::4], full_matrices=False)  # 15,000 rows fit the axes
    projected = rows @ components[:dim].T
    kept = float((singular[:dim] ** 2).sum() / (singular**2).sum())
    return projected.astype(np.float32), f"CIFAR-10 Lite0 features ({full[-1].name[:12]}…), sqrt_l2_center, " \
                                         f"top {dim} principal components ({kept:.1%} of the variance)"


def replicate(source: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n rows: source rows in a seeded order, repeated, plus Gaussian noise (NOISE x each column's std)."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(source.shape[0]) for _ in range(-(-n // source.shape[0]))])[:n]
    scale = (NOISE * source.std(axis=0)).astype(np.float32)
    out = np.empty((n, source.shape[1]), dtype=np.float32)
    for start in range(0, n, 1 << 16):  # in blocks, so the noise never needs a second N x d array
        stop = min(n, start + (1 << 16))
        out[start:stop] = source[picks[start:stop]]
        out[start:stop] += rng.standard_normal((stop - start, source.shape[1]), dtype=np.float32) * scale
    return out


def child_run(source_path: Path, n: int, k1: int, k2: int, nprobe: int) -> None:
    """Measure one size in this (fresh) process; print one JSON line."""
    source = np.load(source_path)
    dim, description = source.shape[1], source_path.with_suffix(".txt").read_text()
    features = replicate(source, n)
    del source
    knn_s, _, knn = timed(knn_cosine, features, k1, method="ivf", nprobe=nprobe, progress=True)
    expand_s, _, S = timed(expand_neighborhood, knn, k2)
    rss_mb = peak_rss_mb()  # VmHWM: unlike ru_maxrss, not inherited from the parent across fork and exec
    recall = estimate_knn_recall(features, knn, n_sample=1000)
    print(json.dumps({
        "n": n, "k1": k1, "k2": k2, "dim": dim, "nprobe": nprobe, "features": description,
        "noise": f"Gaussian, {NOISE} x each component's std", "knn": "faiss IndexIVFFlat, inner product",
        "knn_s": knn_s, "expand_s": expand_s, "total_s": knn_s + expand_s, "knn_recall": recall,
        "input_features_mb": features.nbytes / 2**20, "S_nnz": int(S.nnz),
        "S_mb": (S.indices.nbytes + S.indptr.nbytes + S.data.nbytes) / 2**20,
        "positives_per_image": positives_per_image(S), "rss_peak_mb": rss_mb,
    }))  # fmt: skip


def measure(source_path: Path, n: int, k1: int, k2: int, nprobe: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(n), "--source", str(source_path), "--k1", str(k1),
               "--k2", str(k2), "--nprobe", str(nprobe)]
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    row = json.loads(completed.stdout.splitlines()[-1])
    print(f"[N={n:,}, d={row['dim']}, nprobe={nprobe}] K-NN {row['knn_s']:.1f} s (recall {row['knn_recall']:.3f}), "
          f"expansion {row['expand_s']:.1f} s, total {row['total_s']:.1f} s; peak RSS {row['rss_peak_mb']:,.0f} MB "
          f"(input {row['input_features_mb']:,.0f} MB, S {row['S_mb']:,.0f} MB); "
          f"{row['positives_per_image']:.0f} positives/image", flush=True)
    return row


def main() -> None:
    parser = make_parser(__doc__, results_path("large_neighborhood"), flag="--out")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16])
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=30)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_run(args.source, args.child, args.k1, args.k2, args.nprobe[0])
        return
    with tempfile.TemporaryDirectory() as folder:  # the source rows, made once, so no child pays for them
        source, description = source_features(args.dim)
        source_path = Path(folder) / "source.npy"
        np.save(source_path, source)
        source_path.with_suffix(".txt").write_text(description)
        del source
        rows = [measure(source_path, n, args.k1, args.k2, nprobe) for n in args.sizes for nprobe in args.nprobe]
    write_results(args.out, {"load_average_at_end": list(os.getloadavg()), "rows": rows})


if __name__ == "__main__":
    main()
