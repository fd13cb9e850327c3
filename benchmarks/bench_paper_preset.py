"""The paper preset (the Table 1 VGG encoder trained from pixels) on a CIFAR-10 subset on the CPU, with
optional overrides: mAP@all, distinct codes and the training history next to LSH on the same subset (on
the EfficientNet-Lite0 features, and on raw pixels as the paper's LSH row uses hand-made features), LSH over
--lsh-seeds projection seeds (seed 0 in "lsh_features"/"lsh_pixels", as before).

Subset: 200 queries, 2,000 training images and 5,000 database images drawn (seed 0) from the paper split;
32 bits; the preset at 1/16 of its widths, 25 epochs per beta stage (800 SGD steps), one thread; S from
the cached features, as the reproduction builds it.

    python benchmarks/bench_paper_preset.py --name as-is
    python benchmarks/bench_paper_preset.py --name stable \
        --overrides '{"relative_perceptual": true, "hash_batchnorm": true, "optimizer": "adam", "lr": 0.001}'

Writes benchmarks/results/paper_preset_<name>.json.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from _common import CIFAR10_ZIP, RESULTS_DIR, make_parser, write_results
from bganhash.bgan.estimator import BGANHasher
from bganhash.bgan.train import TrainingDiverged
from bganhash.datasets import load_dataset, protocol_split
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features
from bganhash.hashers import LSH
from bganhash.metrics import mean_average_precision


def main() -> None:
    parser = make_parser(__doc__, RESULTS_DIR / "paper_preset.json")
    parser.add_argument("--data", default=CIFAR10_ZIP)
    parser.add_argument("--name", default="as-is")
    parser.add_argument("--overrides", type=json.loads, default={})
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--lsh-seeds", type=int, default=10, help="LSH is scored over this many projection seeds")
    parser.add_argument("--lsh-only", action="store_true", help="score LSH only (paper_preset_lsh.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("cifar10", args.data)
    split = protocol_split(dataset, 0)
    rng = np.random.default_rng(0)
    query = rng.choice(split.query, 200, replace=False)
    train = rng.choice(split.train, 2000, replace=False)
    database = rng.choice(split.database, 5000, replace=False)
    features = extract_features(dataset, FeatureConfig())
    subsets = {"query": query, "train": train, "database": database}
    images = {name: dataset.to_array(rows) for name, rows in subsets.items()}
    labels = dataset.labels

    def score(query_codes, database_codes) -> float:
        return float(mean_average_precision(query_codes, database_codes, labels[query], labels[database]))

    def pixels(array: np.ndarray) -> np.ndarray:
        return array.reshape(len(array), -1).astype(np.float32) / 255

    def lsh(seed: int, train_rows: np.ndarray, query_rows: np.ndarray, database_rows: np.ndarray) -> float:
        hasher = LSH(args.bits, random_state=seed).fit(train_rows)
        return score(hasher.encode(query_rows), hasher.encode(database_rows))

    lsh_seeds = range(args.lsh_seeds)
    lsh_on_features = [lsh(seed, features[train], features[query], features[database]) for seed in lsh_seeds]
    lsh_on_pixels = [lsh(seed, *(pixels(images[name]) for name in ("train", "query", "database")))
                     for seed in lsh_seeds]
    row = {"name": args.name, "overrides": args.overrides, "bits": args.bits,
           "lsh_features": lsh_on_features[0], "lsh_pixels": lsh_on_pixels[0],
           "lsh_features_seeds": lsh_on_features, "lsh_pixels_seeds": lsh_on_pixels,
           "lsh_features_mean_std": [float(np.mean(lsh_on_features)), float(np.std(lsh_on_features))],
           "lsh_pixels_mean_std": [float(np.mean(lsh_on_pixels)), float(np.std(lsh_on_pixels))]}
    if args.lsh_only:
        print(row, flush=True)
        write_results(args.output.with_name("paper_preset_lsh.json"), row)
        return
    params = {"device": "cpu", "width_factor": 1 / 16, "epochs_per_stage": 25, "num_threads": 1, **args.overrides}
    hasher = BGANHasher(args.bits, preset="paper", random_state=0, **params)
    started = time.perf_counter()
    try:
        hasher.fit(features[train], images=images["train"], progress=False)
    except TrainingDiverged as error:
        row.update(diverged=str(error), seconds=round(time.perf_counter() - started, 1))
    else:
        seconds = round(time.perf_counter() - started, 1)
        codes = hasher.encode(images["database"])
        row.update(map=score(hasher.encode(images["query"]), codes),
                   distinct_codes=int(len(np.unique(codes, axis=0))), seconds=seconds, history=hasher.history_)
    print({k: v for k, v in row.items() if k != "history"}, flush=True)
    default = args.output.name == "paper_preset.json"
    write_results(args.output.with_name(f"paper_preset_{args.name}.json") if default else args.output, row)


if __name__ == "__main__":
    main()
