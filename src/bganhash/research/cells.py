"""What one cell of the reproduction computes: a baseline or a BGAN variant fitted and measured, a
convergence run (Figure 5), the neighbourhood's label precision (Figure 2) or the backbone's timing.

Each function returns the cell's result document (plain JSON values); `bganhash.research.results`
writes it, and the report reads it back (`decode_array` for its images).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bganhash.datasets.splits import validation_split
from bganhash.features.config import FeatureConfig
from bganhash.metrics import hamming_ranking, mean_average_precision, precision_at_k_curve, precision_recall_curve
from bganhash.neighborhood import knn_label_precision_curve
from bganhash.registry import create_hasher
from bganhash.research.plan import FIGURE_BITS, FULL_MODEL, Cell, ReproduceSettings, bgan_hasher
from bganhash.research.protocol import encode_rows, fit_bgan

K_GRID = (1, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)  # Figure 4's precision@K
FIGURE2_K1 = (5, 10, 20, 30, 50, 100)
MAP_TOP_K = 1000  # mAP@1000, recorded beside mAP@all
GALLERY_QUERIES = 12
GALLERY_TOP = 10
N_RECONSTRUCTIONS = 8
MIXED_SIZE_SIDE = 64  # pixels of datasets whose images differ in size are resized to this square
TIMING_IMAGES = 64  # images pushed through the backbone to time per-image feature extraction


def compute_cell(cell: Cell, settings: ReproduceSettings, data, gallery: np.ndarray, out: Path,
                 progress: bool = True) -> dict[str, Any]:
    """The result document of one cell (its numbers only; the runner adds id, params and seconds)."""
    if cell.kind == "baseline":
        return _baseline_cell(cell.params, settings, data, gallery)
    if cell.kind == "bgan":
        return _bgan_result(cell, settings, data, gallery, out, progress)
    if cell.kind == "convergence":
        return _convergence_cell(cell.params, settings, data, progress)
    if cell.kind == "figure2":
        return _figure2_cell(settings, data)
    return _timing_cell(settings, data)


def _baseline_cell(params: dict, settings: ReproduceSettings, data, gallery: np.ndarray) -> dict[str, Any]:
    hasher = create_hasher(params["method"], params["bits"], random_state=settings.seed)
    started = time.perf_counter()
    hasher.fit(data.part("train")[0])
    fit_seconds = time.perf_counter() - started
    measures = _codes_and_measures(lambda idx: hasher.encode(data.features[idx]), data, gallery)
    return {"fit_seconds": fit_seconds, **measures}


def _bgan_result(cell: Cell, settings: ReproduceSettings, data, gallery: np.ndarray, out: Path,
                 progress: bool = True) -> dict[str, Any]:
    """Train one BGAN variant (resumable at beta-stage granularity), then measure its codes."""
    params = cell.params
    hasher = bgan_hasher(settings, params["bits"], params["overrides"], params.get("seed"))
    checkpoints = out / "checkpoints" / cell.id
    started = time.perf_counter()
    resume = checkpoints.is_dir()  # an interrupted cell continues; a new one starts without a warning
    fit_bgan(hasher, data, checkpoint_dir=checkpoints, resume=resume, progress=progress, pixel_size=_image_side(data))
    fit_seconds = time.perf_counter() - started
    measures = _codes_and_measures(lambda idx: encode_rows(hasher, data, idx), data, gallery)
    shutil.rmtree(checkpoints, ignore_errors=True)
    with contextlib.suppress(OSError):
        checkpoints.parent.rmdir()  # only when no other cell's checkpoints remain
    return {"fit_seconds": fit_seconds, "config": hasher.config_, "history": hasher.history_, **measures,
            "reconstructions": reconstructions(hasher, data, settings.seed)}


def _image_side(data) -> int | None:
    """None where the dataset's images share one size (CIFAR-10, digits), else MIXED_SIZE_SIDE."""
    return None if data.dataset.name in ("cifar10", "digits") else MIXED_SIZE_SIDE


def _codes_and_measures(encode: Callable[[np.ndarray], np.ndarray], data, gallery: np.ndarray) -> dict[str, Any]:
    """Encode queries and database, then mAP@all, distinct codes, curves and the gallery's top lists."""
    split = data.split
    query_codes = encode(split.query)
    started = time.perf_counter()
    database_codes = encode(split.database)
    encode_seconds = time.perf_counter() - started
    query_labels, database_labels = data.labels[split.query], data.labels[split.database]
    ks = [k for k in K_GRID if k <= len(split.database)]
    precision, recall = precision_recall_curve(query_codes, database_codes, query_labels, database_labels)
    _, top = hamming_ranking(query_codes[gallery], database_codes, top_k=min(GALLERY_TOP, len(split.database)))
    return {
        "map": mean_average_precision(query_codes, database_codes, query_labels, database_labels),
        # the wider literature's measure (GreedyHash, BiHalf, CIBHash): mAP over each query's top 1,000
        "map_at_1000": mean_average_precision(query_codes, database_codes, query_labels, database_labels,
                                              top_k=min(MAP_TOP_K, len(split.database))),
        "distinct_codes": int(np.unique(database_codes, axis=0).shape[0]),
        "n_database": int(len(split.database)),
        "encode_ms_per_image": 1000.0 * encode_seconds / max(1, len(split.database)),
        "curves": {"ks": ks, "precision_at_k": precision_at_k_curve(query_codes, database_codes, query_labels,
                                                                    database_labels, ks).tolist(),
                   "precision": precision.tolist(), "recall": recall.tolist()},
        "gallery": {"queries": split.query[gallery].tolist(), "top": split.database[top].tolist()},
    }


def reconstructions(hasher, data, seed: int) -> dict[str, Any] | None:
    """Figure 6's rows: query images, their reconstructions from their binary codes, and images
    generated from random codes (None when the variant has no generator)."""
    import torch

    generator = hasher.networks_.generator
    if generator is None:
        return None
    indices = data.split.query[gallery_positions(len(data.split.query), seed)[:N_RECONSTRUCTIONS]]
    random_codes = np.random.default_rng(seed).choice([-1, 1], size=(len(indices), hasher.n_bits))
    device = next(generator.parameters()).device
    generator.eval()
    with torch.no_grad():
        rows = {name: generator(torch.as_tensor(codes, dtype=torch.float32, device=device))
                for name, codes in (("reconstructed", encode_rows(hasher, data, indices)), ("random", random_codes))}
    images = {name: (x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
              for name, x in rows.items()}
    images["inputs"] = data.dataset.to_array(indices, size=hasher.reconstruction_size_)
    return {name: encode_array(array) for name, array in images.items()}


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A uint8 array as JSON: its shape and its bytes in base64."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return {"shape": list(array.shape), "uint8_base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(document: dict[str, Any]) -> np.ndarray:
    """The uint8 array `encode_array` wrote."""
    raw = base64.b64decode(document["uint8_base64"])
    return np.frombuffer(raw, dtype=np.uint8).reshape(document["shape"])


def _convergence_cell(params: dict, settings: ReproduceSettings, data, progress: bool = True) -> dict[str, Any]:
    """Figure 5: train the full model on the training images less a validation set carved from them,
    logging the losses and the validation mAP every epoch (the test queries are never seen)."""
    validation = replace(data, split=validation_split(data.split, seed=settings.seed))
    hasher = bgan_hasher(settings, params["bits"], params["overrides"])
    # BGANHasher scores validation codes from features, so pixel encoders log losses only
    on_features = params["config"]["network"]["encoder"] == "head"
    fit_bgan(hasher, validation, progress=progress, pixel_size=_image_side(data),
             validation=(*validation.part("query"), *validation.part("database")) if on_features else None)
    return {"history": hasher.history_, "n_validation_queries": int(len(validation.split.query)),
            "n_validation_database": int(len(validation.split.database))}


def _figure2_cell(settings: ReproduceSettings, data) -> dict[str, Any]:
    """Figure 2 on the training images' features, transformed as BGAN's K-NN sees them."""
    from bganhash.bgan.estimator import fit_input_transform  # torch

    config = bgan_hasher(settings, FIGURE_BITS, settings.bgan_overrides(FULL_MODEL)).resolved_config()
    features, labels = data.part("train")
    inputs, _ = fit_input_transform(features, config.neighborhood.feature_transform)
    k1_values = [k for k in FIGURE2_K1 if k < len(labels)]
    curve = knn_label_precision_curve(inputs, labels, k1_values, k2=min(config.neighborhood.k2, len(labels)))
    return {"curve": curve, "feature_transform": config.neighborhood.feature_transform}


def _timing_cell(settings: ReproduceSettings, data) -> dict[str, Any]:
    """Per-image backbone time on the query images (features are part of encoding a new image)."""
    if settings.features_path is not None:
        return {"backbone_ms_per_image": None, "note": "precomputed features: no backbone was run",
                "extraction": None}
    from bganhash.features.extract import compute_features, engine_for

    config = data.feature_config or settings.feature_config or FeatureConfig()
    subset = data.dataset.subset(data.split.query[:TIMING_IMAGES])
    compute_features(subset.subset(np.arange(min(4, len(subset)))), config, progress=False)  # warm-up
    started = time.perf_counter()
    compute_features(subset, config, progress=False)
    seconds = time.perf_counter() - started
    return {"backbone_ms_per_image": 1000.0 * seconds / len(subset), "n_images": len(subset),
            "extraction": getattr(data, "extraction", None),  # the whole dataset's, for Table 6's end to end
            "backbone": config.backbone, "image_size": config.image_size, "runtime": engine_for(config).runtime}


def gallery_positions(n_query: int, seed: int) -> np.ndarray:
    """Positions (in the split's query list) of the gallery's queries: a seeded dozen."""
    count = min(GALLERY_QUERIES, n_query)
    return np.sort(np.random.default_rng(seed).choice(n_query, count, replace=False))
