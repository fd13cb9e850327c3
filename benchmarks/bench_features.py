"""Feature extraction on CIFAR-10: throughput (images/s) and KNN@k label precision at several input sizes.

Usage: python benchmarks/bench_features.py [--data ../shared/data/cifar10-jpg.zip] [--sizes 128 160 192 224]
Writes benchmarks/results/features.json. Throughput covers resize and network on decoded images, on
however many cores torch may use here; on a shared machine it is noisy, so the load average is recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from _common import CIFAR10_ZIP, make_parser, results_path, timed, write_results
from bganhash.datasets import load_dataset, protocol_split
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features


def knn_label_precision(X: np.ndarray, labels: np.ndarray, k: int = 20, chunk: int = 1000) -> float:
    """Mean fraction of each image's k cosine nearest neighbours (itself excluded) that share its label."""
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    hits = 0
    for start in range(0, len(unit), chunk):
        rows = np.arange(start, min(start + chunk, len(unit)))
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf
        neighbours = np.argpartition(-similarity, k, axis=1)[:, :k]
        hits += int((labels[neighbours] == labels[rows, None]).sum())
    return hits / (len(unit) * k)


def main() -> None:
    parser = make_parser(__doc__, results_path("features"), flag="--out")
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP, help="CIFAR-10 zip, tarball or folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 224])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the paper split")
    parser.add_argument("--n-images", type=int, default=None, help="a random N of the 10,000 training images only")
    args = parser.parse_args()

    dataset = load_dataset("cifar10", args.data)
    split = protocol_split(dataset, seed=args.seed, protocol="paper")
    train_indices = split.train
    if args.n_images is not None:
        train_indices = np.sort(np.random.default_rng(args.seed).permutation(train_indices)[: args.n_images])
    train = dataset.subset(train_indices)
    labels = np.asarray(train.labels)
    # the CIFAR reader decodes all 60,000 JPEGs on first access: keep that out of the timings
    decode_seconds = timed(train.read_image, 0).seconds
    report = {
        "benchmark": "features", "dataset": "CIFAR-10 (JPEG copy)",
        "subset": f"paper training split (1,000 per class), seed {args.seed}, {len(train)} images",
        "backbone": args.backbone, "batch_size": args.batch_size, "k": args.k,
        "throughput": "resize + network on decoded images, images/s (decoding all 60,000 JPEGs once: decode_seconds)",
        "decode_seconds": round(decode_seconds, 1),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "results": [],
    }
    for size in args.sizes:
        config = FeatureConfig(backbone=args.backbone, image_size=size, batch_size=args.batch_size)
        load_before = os.getloadavg()[0]
        seconds, _, X = timed(extract_features, train, config, cache=False)
        row = {
            "image_size": size, "n_images": len(train), "seconds": round(seconds, 1),
            "images_per_s": round(len(train) / seconds, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            f"knn{args.k}_precision": round(knn_label_precision(X, labels, args.k), 4),
            f"knn{args.k}_precision_sqrt_l2_center": round(
                knn_label_precision(transform_features(X, "sqrt_l2_center"), labels, args.k), 4),
        }
        report["results"].append(row)
        print(row, flush=True)
        write_results(args.out, report)


if __name__ == "__main__":
    main()
