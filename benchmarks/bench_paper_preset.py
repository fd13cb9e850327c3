"""The paper preset (the Table 1 VGG encoder trained from pixels) on a CIFAR-10 subset on the CPU, with
optional overrides: mAP@all, distinct codes and the training history next to LSH on the same subset (on
the EfficientNet-Lite0 features, and on raw pixels as the paper's LSH row uses hand-made features).

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

    lsh_features = LSH(args.bits, random_state=0).fit(features[train])
    lsh_pixels = LSH(args.bits, random_state=0).fit(pixels(images["train"]))
    row = {"name": args.name, "overrides": args.overrides, "bits": args.bits,
           "lsh_features": score(lsh_features.encode(features[query]), lsh_features.encode(features[database])),
           "lsh_pixels": score(lsh_pixels.encode(pixels(images["query"])),
                               lsh_pixels.encode(pixels(images["database"])))}
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
