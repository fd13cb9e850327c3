"""Seconds per BGAN training epoch (the cpu preset's full model on CIFAR-10 features), for one or more
source trees in alternation, so a code change's effect on training speed is measured under the same load.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_train_step.py --trees /tmp/before/src src --repeats 2

Each run is a fresh process (PYTHONPATH=<tree>) training one beta stage of --epochs epochs on the
validation split's 9,000 training images (EfficientNet-Lite0 features from the cache, 16 px
reconstructions, one thread); the figure is the mean of its epochs' seconds (S's construction excluded).
Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _common import CIFAR10_ZIP, make_parser, results_path, write_results

CHILD = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from bganhash.bgan.estimator import BGANHasher
from bganhash.datasets import load_dataset, protocol_split
from bganhash.datasets.splits import validation_split
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
data, bits, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dataset = load_dataset("cifar10", data)
split = validation_split(protocol_split(dataset, 0), 1000)
features = extract_features(dataset, FeatureConfig(), progress=False)
hasher = BGANHasher(bits, preset="cpu", random_state=0, epochs_per_stage=epochs, beta_schedule=[1.0])
hasher.fit(features[split.train], images=dataset.to_array(split.train), progress=False)
print(json.dumps([record["seconds"] for record in hasher.history_]))
"""


def run_tree(tree: Path, data: str, bits: int, epochs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, data, str(bits), str(epochs)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = make_parser(__doc__, results_path("train_step"))
    parser.add_argument("--trees", type=Path, nargs="+", required=True, help="source folders holding bganhash/")
    parser.add_argument("--data", default=str(CIFAR10_ZIP))
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = {str(tree): [] for tree in args.trees}
    for repeat in range(args.repeats):
        for tree in args.trees:
            seconds = run_tree(tree.resolve(), args.data, args.bits, args.epochs)
            runs[str(tree)].append(seconds)
            print(f"repeat {repeat}: {tree}: {sum(seconds) / len(seconds):.2f} s per epoch ({seconds})", flush=True)
    means = {tree: sum(sum(r) for r in rs) / sum(len(r) for r in rs) for tree, rs in runs.items()}
    reference = means[str(args.trees[0])]
    for tree, mean in means.items():
        print(f"{tree}: {mean:.2f} s per epoch, {reference / mean:.2f}x the first tree's speed")
    write_results(args.output, {"benchmark": "seconds per BGAN training epoch, cpu preset, 9,000 CIFAR-10 images",
                                "bits": args.bits, "epochs": args.epochs, "runs": runs, "mean_seconds": means,
                                "speed_vs_first": {t: reference / m for t, m in means.items()},
                                "load_average_after": os.getloadavg()})


if __name__ == "__main__":
    main()
