"""bf16 against fp32 features on the CIFAR-10 protocol: mAP@all at 32 bits of BGAN (cpu preset) and ITQ.

Usage: python benchmarks/bench_precision.py [--data ../shared/data/cifar10-jpg.zip] [--bits 32] [--seed 0]
Extracts (or reads from the cache) the 60,000 images' features in each precision, trains both hashers on the
paper split's 10,000 training images and scores them. Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import CIFAR10_ZIP, make_parser, results_path, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.features.config import FeatureConfig
from bganhash.research.protocol import fit_bgan, prepare_protocol, run_baselines, score_hasher


def main() -> None:
    parser = make_parser(__doc__, results_path("precision"), flag="--out", full_doc=True)
    parser.add_argument("--data", type=Path, default=CIFAR10_ZIP)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scores = {}
    for precision in ("bf16", "fp32"):
        config = FeatureConfig(precision=precision)
        started = time.perf_counter()
        protocol = prepare_protocol("cifar10", args.data, feature_config=config, seed=args.seed)
        seconds = time.perf_counter() - started
        hasher = BGANHasher(args.bits, preset="cpu", random_state=args.seed, feature_config=config)
        fit_bgan(hasher, protocol, progress=False)
        itq = run_baselines(protocol, [args.bits], ["itq"], seed=args.seed).scores["itq"][args.bits]
        scores[precision] = {"bgan": round(score_hasher(hasher, protocol), 5), "itq": round(itq, 5),
                             "features_s": round(seconds, 1)}
        print(precision, scores[precision], flush=True)
    write_results(args.out, {"bits": args.bits, "seed": args.seed, "map_all": scores})


if __name__ == "__main__":
    main()
