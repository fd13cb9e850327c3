"""The paper's evaluation protocol: features and split in, hashers fitted on the training images,
codes ranked by Hamming distance, mAP@all out (a `ResultTable`; `bganhash.research.tables` renders it)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import bganhash
from bganhash._system import machine_description
from bganhash._validation import InputError
from bganhash.datasets import load_dataset
from bganhash.datasets.splits import protocol_split
from bganhash.features.cache import load_features
from bganhash.features.config import FeatureConfig
from bganhash.metrics import mean_average_precision
from bganhash.registry import BASELINES, create_hasher
from bganhash.research import paper

RANKING_RULE = "Hamming distance, ties broken by database order"


@dataclass
class ProtocolData:
    """A labelled dataset with its features (row i = image i) and its protocol split."""

    dataset: object
    features: np.ndarray
    split: object
    feature_source: str
    feature_config: object = None  # how the features were extracted (None for precomputed features)
    # How long extracting the features took, when known: {"seconds", "n_images", "cached"} (the cache's
    # sidecar <cache>.json records the first extraction's seconds); None for precomputed features.
    extraction: dict | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of one part of the split: "query", "train" or "database"."""
        indices = getattr(self.split, name)
        return self.features[indices], self.labels[indices]


@dataclass
class ResultTable:
    """mAP@all (and mAP@1000) of each method at each bit length on one dataset, plus what produced it."""

    dataset: str
    bits: list[int]
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: dict[str, dict[int, float]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    scores_at_1000: dict[str, dict[int, float]] = field(default_factory=dict)

    def add(self, method: str, n_bits: int, score: float, seconds: float, score_at_1000: float | None = None) -> None:
        self.scores.setdefault(method, {})[n_bits] = float(score)
        self.seconds.setdefault(method, {})[n_bits] = float(seconds)
        if score_at_1000 is not None:
            self.scores_at_1000.setdefault(method, {})[n_bits] = float(score_at_1000)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "metric": "mAP@all",
            "ranking": RANKING_RULE,
            "bits": self.bits,
            "map": {m: {str(b): v for b, v in row.items()} for m, row in self.scores.items()},
            "map_at_1000": {m: {str(b): v for b, v in row.items()} for m, row in self.scores_at_1000.items()},
            "fit_encode_seconds": {m: {str(b): v for b, v in row.items()} for m, row in self.seconds.items()},
            "paper": _paper_rows(self.dataset),
            **self.metadata,
        }


def prepare_protocol(
    dataset_name: str,
    data: str | Path | None = None,
    *,
    features_path: str | Path | None = None,
    feature_config=None,
    seed: int = 0,
    on_error: str = "skip",
    progress: bool = True,
    split=None,
    protocol: str | None = None,
) -> ProtocolData:
    """Load a labelled dataset, draw its protocol split and get its features (cached or from a .npy).

    `split` (a saved `Split`) replaces the drawn one, e.g. for a dataset too small for the paper's.
    """
    dataset = load_dataset(dataset_name, data, on_error=on_error)
    if dataset.labels is None:
        raise InputError(
            f"dataset {dataset_name!r} at {data} has no labels (no class sub-folders), so retrieval "
            "cannot be evaluated; use `bganhash index` to search it instead"
        )
    if split is None:
        split = protocol_split(dataset, seed=seed, protocol=protocol)
    else:
        split.check(dataset)
    if features_path is not None:
        features = load_features(features_path, n_expected=len(dataset))
        source = f"precomputed features from {features_path}"
    else:
        from bganhash.features.extract import extract_features  # torch

        config = feature_config or FeatureConfig.for_data(dataset)  # the input size suits the images
        started = time.perf_counter()
        features = extract_features(dataset, config, progress=progress)
        extraction = extraction_record(dataset, config, time.perf_counter() - started)
        source = f"{config.backbone} at {config.image_size}px (ImageNet-pretrained, pooled)"
        return ProtocolData(dataset=dataset, features=features, split=split, feature_source=source,
                            feature_config=config, extraction=extraction)
    return ProtocolData(dataset=dataset, features=features, split=split, feature_source=source)


def extraction_record(dataset, config: FeatureConfig, seconds_now: float) -> dict:
    """The feature extraction's time: the seconds the cache's sidecar JSON recorded when the features were
    first extracted (`cached`: True, read back now), else the `seconds_now` this call took."""
    from bganhash.features.cache import feature_cache_path

    sidecar = feature_cache_path(dataset, config).with_suffix(".json")
    try:
        recorded = float(json.loads(sidecar.read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    cached = recorded is not None and seconds_now < 0.5 * recorded
    return {"seconds": recorded if cached else seconds_now, "n_images": len(dataset), "cached": cached}


def map_all_and_at_1000(hasher, data: ProtocolData) -> tuple[float, float]:
    """mAP@all and mAP@1000 of a fitted hasher, from one encoding of the queries and the database: the
    paper's measure and the one of the train-test literature (GreedyHash, BiHalf, CIBHash)."""
    codes_and_labels = _codes_and_labels(hasher, data)
    return (mean_average_precision(*codes_and_labels),
            mean_average_precision(*codes_and_labels, min(1000, len(data.split.database))))


def encode_rows(hasher, data: ProtocolData, indices: np.ndarray) -> np.ndarray:
    """Codes of dataset rows: from their features, or from their pixels for a hasher that reads pixels
    itself (a BGAN with encoder="vgg" or "finetune"), resized to its input side."""
    if getattr(hasher, "encodes_pixels", False):
        return hasher.encode(data.dataset.to_array(indices, size=hasher.pixel_size))
    return hasher.encode(data.features[indices])


def score_hasher(hasher, data: ProtocolData, top_k: int | None = None) -> float:
    """mAP of a fitted hasher (mAP@all, or mAP@`top_k`): queries ranked against the database by Hamming
    distance. Pixel encoders encode the images, every other hasher the features."""
    return mean_average_precision(*_codes_and_labels(hasher, data), top_k)


def _codes_and_labels(hasher, data: ProtocolData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The split's query codes, database codes, query labels and database labels."""
    split = data.split
    return (encode_rows(hasher, data, split.query), encode_rows(hasher, data, split.database),
            data.labels[split.query], data.labels[split.database])


def fit_bgan(hasher, data: ProtocolData, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
             progress: bool = True, validation: tuple | None = None, pixel_size: int | None = None):
    """Train a BGANHasher on the split's training images: their features, pixels and labels (the
    labels are used only by the supervised variant). Returns the fitted hasher.

    validation: (X_query, y_query, X_database, y_database) for a per-epoch validation mAP;
    pixel_size: resize the training images to pixel_size squares (for datasets of mixed image sizes).
    """
    train = data.split.train
    return hasher.fit(
        data.features[train],
        images=data.dataset.to_array(train, size=pixel_size),
        labels=data.labels[train],
        validation=validation,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )


def run_baselines(
    data: ProtocolData,
    bits: Sequence[int],
    methods: Iterable[str] | None = None,
    *,
    seed: int = 0,
    on_cell: Callable[[str, int, float], None] | None = None,
) -> ResultTable:
    """Evaluate each baseline at each bit length under the protocol; `on_cell` reports progress."""
    table = ResultTable(dataset=data.dataset.name, bits=list(bits), metadata=protocol_metadata(data, seed))
    for method in methods or BASELINES:
        for n_bits in bits:
            start = time.perf_counter()
            hasher = create_hasher(method, n_bits, random_state=seed).fit(data.part("train")[0])
            score, score_at_1000 = map_all_and_at_1000(hasher, data)
            table.add(method, n_bits, score, time.perf_counter() - start, score_at_1000)
            if on_cell is not None:
                on_cell(method, n_bits, score)
    return table


def protocol_metadata(data: ProtocolData, seed: int) -> dict:
    """What a reader needs to know to trust and reproduce a result table."""
    return {
        "protocol": getattr(data.split, "protocol", "paper"),
        "seed": seed,
        "n_query": int(len(data.split.query)),
        "n_train": int(len(data.split.train)),
        "n_database": int(len(data.split.database)),
        "features": data.feature_source,
        "data": str(getattr(data.dataset, "root", None)),
        "bganhash": bganhash.__version__,
        "machine": f"{machine_description()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def _paper_rows(dataset: str) -> dict[str, tuple]:
    """The paper's Table 3 rows on `dataset` (none where it reports no results there)."""
    published = paper.published(dataset, "table3")
    return {} if published is None else dict(published.rows)
