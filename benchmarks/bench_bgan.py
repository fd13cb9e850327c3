"""BGAN on CIFAR-10 (paper split, cached default features): training time, encoding throughput, mAP@all
next to ITQ on the same features and split.

    python benchmarks/bench_bgan.py --data ../shared/data/cifar10-jpg.zip            # 12, 24, 32, 48 bits
    python benchmarks/bench_bgan.py --data ../shared/data/cifar10-jpg.zip --bits 32  # one run

Features come from the feature cache (bganhash.features.extract_features); the first run extracts
them (minutes). Timings: seconds per training epoch (mean over epochs), seconds from the start of
`fit` to the end of the last beta stage (S construction included), codes/s from features for the
59,000 database images, and images/s from pixels (decode-free: uint8 arrays through the backbone
and the head).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from _common import CIFAR10_ZIP, make_parser, results_path, timed, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.datasets import load_dataset, protocol_split
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.hashers import ITQ
from bganhash.metrics import mean_average_precision
from bganhash.pipeline import ImagePipeline

PAPER_BGAN = {12: 0.401, 24: 0.512, 32: 0.531, 48: 0.558}  # Table 3, CIFAR-10


def evaluate(hasher, features: np.ndarray, labels: np.ndarray, split) -> float:
    return mean_average_precision(hasher.encode(features[split.query]), hasher.encode(features[split.database]),
                                  labels[split.query], labels[split.database])


def pixel_throughput(hasher: BGANHasher, images: np.ndarray, batch_size: int) -> float:
    """Images per second from uint8 pixels to codes (backbone included, through the ImagePipeline), after one
    warm-up batch."""
    pipeline = ImagePipeline(hasher)
    pictures = list(images)
    pipeline.encode_images(pictures[:batch_size])
    return len(pictures) / timed(pipeline.encode_images, pictures).seconds


def main() -> None:
    parser = make_parser(__doc__, results_path("bgan"))
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 24, 32, 48])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pixel-images", type=int, default=512, help="images timed for the pixel throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = load_dataset("cifar10", args.data)
    split = protocol_split(dataset, args.seed)
    feature_config = FeatureConfig()
    features = extract_features(dataset, feature_config)
    labels = dataset.labels
    train_images = dataset.to_array(split.train)

    rows = []
    for n_bits in args.bits:
        itq_seconds, _, itq = timed(ITQ(n_bits, random_state=args.seed).fit, features[split.train])
        itq_map = evaluate(itq, features, labels, split)

        hasher = BGANHasher(n_bits, preset=args.preset, random_state=args.seed, feature_config=feature_config)
        fit_seconds = timed(hasher.fit, features[split.train], images=train_images, progress=False).seconds
        encode_seconds, _, database_codes = timed(hasher.encode, features[split.database])
        codes_per_second = len(database_codes) / encode_seconds
        bgan_map = mean_average_precision(hasher.encode(features[split.query]), database_codes,
                                          labels[split.query], labels[split.database])
        epoch_seconds = [record["seconds"] for record in hasher.history_]
        row = {
            "n_bits": n_bits,
            "bgan_map": bgan_map,
            "itq_map": itq_map,
            "bgan_minus_itq": bgan_map - itq_map,
            "paper_bgan_map": PAPER_BGAN.get(n_bits),
            "seconds_per_epoch": float(np.mean(epoch_seconds)),
            "epochs": len(epoch_seconds),
            "seconds_to_last_stage_end": fit_seconds,
            "itq_fit_seconds": itq_seconds,
            "codes_per_second_from_features": codes_per_second,
        }
        print(f"{n_bits:3d} bits  BGAN {bgan_map:.4f}  ITQ {itq_map:.4f}  (paper BGAN {PAPER_BGAN.get(n_bits)})  "
              f"fit {fit_seconds:.1f} s, {row['seconds_per_epoch']:.2f} s/epoch x {len(epoch_seconds)}, "
              f"{codes_per_second:,.0f} codes/s from features", flush=True)
        rows.append(row)

    pixels = dataset.to_array(split.query[: args.pixel_images])
    images_per_second = pixel_throughput(hasher, pixels, feature_config.batch_size)
    print(f"encoding from pixels (backbone {feature_config.backbone}@{feature_config.image_size} + head): "
          f"{images_per_second:.1f} images/s")
    write_results(args.output, {
        "benchmark": "BGAN on CIFAR-10, paper split, mAP@all (Hamming ranking, ties by database order)",
        "preset": args.preset,
        "config": hasher.config_,
        "features": {"backbone": feature_config.backbone, "image_size": feature_config.image_size},
        "split": {"seed": args.seed, **split.sizes()},
        "rows": rows,
        "images_per_second_from_pixels": images_per_second,
        "threads": args.threads,
        "load_average_after": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
