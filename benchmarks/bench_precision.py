"""Lower-precision features against fp32 on the CIFAR-10 protocol: extraction speed, cosine to the fp32
features, and mAP@all at 32 bits of BGAN (cpu preset) and ITQ trained on each.

Usage: python benchmarks/bench_precision.py [--data ../shared/data/cifar10-jpg.zip] [--bits 32] [--seeds 0,1,2]
           [--precisions fp32,int8,bf16]
Extracts (or reads from the cache: then its speed is not measured) the 60,000 images' features in each
precision, then per seed (the split's and the hashers') trains both hashers on the paper split's 10,000
training images and scores them. fp32 runs first: the others are compared to it, seed by seed, and the
mean change over the seeds is what decides a default. Writes benchmarks/results/precision.json.
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
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--precisions", default="fp32,int8,bf16")
    args = parser.parse_args()
    precisions = ["fp32"] + [p for p in args.precisions.split(",") if p != "fp32"]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    dataset = load_dataset("cifar10", args.data)
    scores, reference = {}, None
    for precision in precisions:
        config = FeatureConfig(precision=precision)
        cached = feature_cache_path(dataset, config).is_file()
        started = time.perf_counter()
        features = prepare_protocol("cifar10", args.data, feature_config=config, seed=seeds[0]).features
        seconds = time.perf_counter() - started
        reference = features if reference is None else reference
        norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
        cosine = np.sum(features * reference, 1) / norms
        scores[precision] = {
            "features_s": None if cached else round(seconds, 1),
            "images_per_s": None if cached else round(len(dataset) / seconds, 1),
            "cosine_to_fp32_mean": round(float(cosine.mean()), 5), "cosine_to_fp32_min": round(float(cosine.min()), 5),
            "per_seed": {seed: score_seed(args, config, seed) for seed in seeds}}
        summarise(scores[precision], scores["fp32"])
        print(precision, scores[precision], flush=True)
    write_results(args.out, {"bits": args.bits, "seeds": seeds, "map_all": scores})


def score_seed(args, config: FeatureConfig, seed: int) -> dict:
    """mAP@all of BGAN (cpu preset) and ITQ trained on the seed's paper split of these features."""
    protocol = prepare_protocol("cifar10", args.data, feature_config=config, seed=seed)
    hasher = BGANHasher(args.bits, preset="cpu", random_state=seed, feature_config=config)
    fit_bgan(hasher, protocol, progress=False)
    itq = run_baselines(protocol, [args.bits], ["itq"], seed=seed).scores["itq"][args.bits]
    return {"bgan": round(score_hasher(hasher, protocol), 5), "itq": round(itq, 5)}


def summarise(entry: dict, fp32: dict) -> None:
    """Mean over the seeds, and the mean and spread of the per-seed change against fp32."""
    for method in ("bgan", "itq"):
        values = np.array([run[method] for run in entry["per_seed"].values()])
        changes = values - np.array([fp32["per_seed"][seed][method] for seed in entry["per_seed"]])
        entry[method] = round(float(values.mean()), 5)
        entry[f"{method}_change_mean"] = round(float(changes.mean()), 5)
        entry[f"{method}_change_std"] = round(float(changes.std(ddof=1)), 5) if len(changes) > 1 else None

if __name__ == "__main__":
    main()
