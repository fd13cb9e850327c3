"""Which features for BGAN on CIFAR-10: backbone and input size, judged on the validation split.

For each feature choice (backbone@size), on the validation split carved from the 10,000 paper training
images (1,000 queries, the other 9,000 as database and training set; the test queries are never seen):
KNN@20 label precision, then mAP@all of ITQ and of BGAN (the default configuration, several seeds) at
one code length. With --test, the chosen feature sets are also scored on the paper's test split.
With --variant NAME:field=value,..., BGAN is also trained with those configuration overrides (the
fields of `bganhash train --set`), each variant a row beside the default.

    python benchmarks/bench_feature_choice.py --data ../shared/data/cifar10-jpg.zip \
        --features efficientnet_lite0@128 efficientnet_lite0@224 --seeds 0 1
    python benchmarks/bench_feature_choice.py --features efficientnet_lite2@260 --bits 12 \
        --variant default: --variant epochs10:epochs_per_stage=10 --variant k100:k1=100,k2=100

Features come from the feature cache (extracted on first use: minutes to an hour on 2 cores).
Writes benchmarks/results/feature_choice.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.datasets import load_dataset, protocol_split
from bganhash.datasets.splits import validation_split
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.features.transforms import transform_features
from bganhash.hashers import ITQ
from bganhash.metrics import mean_average_precision
from bganhash.neighborhood import knn_cosine, label_precision


def score(hasher, features: np.ndarray, labels: np.ndarray, split) -> float:
    return mean_average_precision(hasher.encode(features[split.query]), hasher.encode(features[split.database]),
                                  labels[split.query], labels[split.database])


def parse_variant(text: str) -> tuple[str, dict]:
    """"name:field=value,field=value" -> (name, overrides); values are JSON where they parse."""
    name, _, fields = text.partition(":")
    overrides = {}
    for item in filter(None, re.split(r",(?=\s*\w+=)", fields)):  # commas inside a JSON list stay
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} must look like field=value")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return name or "default", overrides


def evaluate_choice(name: str, features: np.ndarray, labels: np.ndarray, split, images_of, args,
                    overrides: dict | None = None) -> dict:
    """KNN@20 precision of the training features, ITQ and BGAN mAP (per seed) on `split`."""
    train = features[split.train]
    knn = knn_cosine(transform_features(train, "sqrt_l2_center"), 20)
    row = {"features": name, "split": split.protocol, "knn20_precision": label_precision(knn, labels[split.train]),
           "itq": {}, "bgan": {}, "bgan_seconds": {}, "overrides": overrides or {}}
    for n_bits in args.bits:
        row["itq"][n_bits] = score(ITQ(n_bits, random_state=0).fit(train), features, labels, split)
        maps, seconds = [], []
        for seed in args.seeds:
            started = time.perf_counter()
            hasher = BGANHasher(n_bits, preset="cpu", random_state=seed, **(overrides or {}))
            hasher.fit(train, images=images_of(split.train), progress=False)
            seconds.append(time.perf_counter() - started)
            maps.append(score(hasher, features, labels, split))
        row["bgan"][n_bits] = maps
        row["bgan_seconds"][n_bits] = seconds
        print(f"{name:<26} {split.protocol:<17} {n_bits:2d} bits: KNN@20 {row['knn20_precision']:.3f}  "
              f"ITQ {row['itq'][n_bits]:.4f}  BGAN {np.mean(maps):.4f} ({', '.join(f'{m:.4f}' for m in maps)})",
              flush=True)
    return row


def feature_choice(choice: str) -> FeatureConfig:
    """A FeatureConfig from "backbone[@size][+flip][/precision]", e.g. "efficientnet_lite2@260+flip/fp32"."""
    choice, _, precision = choice.partition("/")
    choice, flip = (choice[: -len("+flip")], True) if choice.endswith("+flip") else (choice, False)
    backbone, _, size = choice.partition("@")
    fields = {"backbone": backbone, "flip": flip, "precision": precision or "auto"}
    return FeatureConfig(**fields, **({"image_size": int(size)} if size else {})).validate()


def main() -> None:
    parser = make_parser(__doc__, results_path("feature_choice"))
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--features", nargs="+", default=["efficientnet_lite0@128", "efficientnet_lite0@224"],
                        metavar="BACKBONE[@SIZE][+flip][/PRECISION]",
                        help="feature choices, e.g. efficientnet_lite2@260 or efficientnet_lite0@224+flip/fp32")
    parser.add_argument("--bits", type=int, nargs="+", default=[32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", action="store_true", help="also score every choice on the paper's test split")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME:FIELD=VALUE,...",
                        help="a BGAN configuration to train beside the others (repeatable); 'default:' is the preset")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = [parse_variant(text) for text in (args.variant or ["default:"])]
    dataset = load_dataset("cifar10", args.data)
    split = protocol_split(dataset, 0)
    splits = [validation_split(split, 1000)] + ([split] if args.test else [])
    cached_images = {}

    def images_of(indices: np.ndarray) -> np.ndarray:
        key = indices.tobytes()
        if key not in cached_images:
            cached_images[key] = dataset.to_array(indices)
        return cached_images[key]

    rows = []
    for choice in args.features:
        features = extract_features(dataset, feature_choice(choice))
        for evaluated in splits:
            for variant, overrides in variants:
                label = choice if variant == "default" else f"{choice} {variant}"
                rows.append(evaluate_choice(label, features, dataset.labels, evaluated, images_of, args, overrides))
    write_results(args.output, {
        "benchmark": "feature choice for BGAN on CIFAR-10: KNN@20 precision, ITQ and BGAN mAP@all",
        "rows": rows, "seeds": args.seeds, "bits": args.bits, "preset": "cpu",
        "threads": args.threads, "load_average_after": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
