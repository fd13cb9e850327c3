"""Lower-precision features against fp32 on the CIFAR-10 protocol: extraction speed, cosine to the fp32
features, and mAP@all at 32 bits of BGAN (cpu preset) and ITQ trained on each.

Usage: python benchmarks/bench_precision.py [--data ../shared/data/cifar10-jpg.zip] [--bits 32] [--seed 0]
           [--precisions fp32,int8,bf16]
Extracts (or reads from the cache: then its speed is not measured) the 60,000 images' features in each
precision, trains both hashers on the paper split's 10,000 training images and scores them. fp32 runs first:
the others are compared to it. Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.datasets import load_dataset
from bganhash.features.cache import feature_cache_path
from bganhash.features.config import FeatureConfig
from bganhash.research.protocol import fit_bgan, prepare_protocol, run_baselines, score_hasher


def main() -> None:
    parser = make_parser(__doc__, results_path("precision"), flag="--out", full_doc=True)
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,int8,bf16")
    args = parser.parse_args()
    precisions = ["fp32"] + [p for p in args.precisions.split(",") if p != "fp32"]
    dataset = load_dataset("cifar10", args.data)
    scores, reference = {}, None
    for precision in precisions:
        config = FeatureConfig(precision=precision)
        cached = feature_cache_path(dataset, config).is_file()
        started = time.perf_counter()
        protocol = prepare_protocol("cifar10", args.data, feature_config=config, seed=args.seed)
        seconds = time.perf_counter() - started
        reference = protocol.features if reference is None else reference
        cosine = np.sum(protocol.features * reference, 1) / (
            np.linalg.norm(protocol.features, axis=1) * np.linalg.norm(reference, axis=1))
        hasher = BGANHasher(args.bits, preset="cpu", random_state=args.seed, feature_config=config)
        fit_bgan(hasher, protocol, progress=False)
        itq = run_baselines(protocol, [args.bits], ["itq"], seed=args.seed).scores["itq"][args.bits]
        scores[precision] = {
            "bgan": round(score_hasher(hasher, protocol), 5), "itq": round(itq, 5),
            "features_s": None if cached else round(seconds, 1),
            "images_per_s": None if cached else round(len(dataset) / seconds, 1),
            "cosine_to_fp32_mean": round(float(cosine.mean()), 5), "cosine_to_fp32_min": round(float(cosine.min()), 5)}
        print(precision, scores[precision], flush=True)
    write_results(args.out, {"bits": args.bits, "seed": args.seed, "map_all": scores})


if __name__ == "__main__":
    main()
