"""Feature arrays on disk: the cache of extracted features (keyed by dataset, backbone, size and
preprocessing) and precomputed `.npy` files (never pickles)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import atomic_write, cache_root, write_json
from bganhash._validation import InputError, check_features
from bganhash._version import __version__
from bganhash.features.config import FeatureConfig

logger = logging.getLogger(__name__)

PREPROCESSING_VERSION = 2  # bump when decoding or resize_pixels changes, so old caches stop matching


def feature_cache_dir() -> Path:
    """Folder of cached features: $BGANHASH_CACHE/features, else ~/.cache/bganhash/features."""
    return cache_root() / "features"


def preprocessing_key(config: FeatureConfig) -> str:
    """Short hash of everything in preprocessing besides the size (resize mode, scaling, code version)."""
    description = {"resize": config.resize, "antialias": "when downscaling", "scaling": "backbone input_mean/std",
                   "version": PREPROCESSING_VERSION}
    if config.precision != "fp32":
        description["precision"] = config.precision
    if config.flip:
        description["flip"] = "mean with the mirror image"
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:10]


def feature_cache_path(dataset: Any, config: FeatureConfig | None = None) -> Path:
    """Where `extract_features(dataset, config)` caches its result."""
    config = (config or FeatureConfig()).validate()
    fingerprint = str(dataset.fingerprint())
    if not re.fullmatch(r"[A-Za-z0-9._]{1,64}", fingerprint):
        fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    name = f"{fingerprint}-{config.backbone}-{config.image_size}-{preprocessing_key(config)}.npy"
    return feature_cache_dir() / name


def read_cache(path: Path, n_images: int) -> np.ndarray | None:
    """The cached features if the file is present and sound; None (recompute) otherwise."""
    if not path.is_file():
        return None
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, exc)
        return None
    sound = (features.dtype == np.float32 and features.ndim == 2 and features.shape[0] == n_images
             and bool(np.isfinite(features).all()))
    if not sound:
        logger.warning("ignoring feature cache %s: %s %s, expected %d finite float32 rows; recomputing",
                       path, features.dtype, features.shape, n_images)
        return None
    return features


def write_cache(path: Path, features: np.ndarray, dataset: Any, config: FeatureConfig, seconds: float) -> None:
    with atomic_write(path, "wb") as handle:
        np.save(handle, features, allow_pickle=False)
    write_json(path.with_suffix(".json"), {
        "dataset": getattr(dataset, "name", None), "fingerprint": str(dataset.fingerprint()),
        "config": asdict(config), "preprocessing_key": preprocessing_key(config),
        "shape": list(features.shape), "dtype": "float32", "seconds": round(seconds, 2),
        "bganhash_version": __version__,
    })


def load_features(path: str | os.PathLike, n_expected: int | None = None) -> np.ndarray:
    """Precomputed features from a `.npy` file (no pickles): finite float32 (n, D), n checked if given."""
    path = Path(path)
    if path.suffix != ".npy":
        raise InputError(f"features file {path} must be a .npy file (numpy.save); got suffix {path.suffix!r}")
    if not path.is_file():
        raise InputError(f"features file {path} does not exist")
    check_npy_header(path)  # before reading: a header may claim more than the file (or the memory) holds
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"features file {path} cannot be read as a plain .npy array: {exc}") from exc
    features = check_features(array, name=f"features file {path}")
    if n_expected is not None and features.shape[0] != n_expected:
        raise InputError(f"features file {path} has {features.shape[0]} rows, but the dataset has {n_expected} images")
    return features


def check_npy_header(path: Path) -> None:
    """InputError unless `path` starts with a .npy header of a 2-D real numeric array (no objects) whose
    data is exactly the rest of the file; reads the header only."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in readers:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = readers[version](handle)
            data_starts = handle.tell()
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError...
        size = path.stat().st_size
        problem = "it is empty (0 bytes)" if size == 0 else f"its header is unreadable: {exc}"
        raise InputError(f"features file {path} is not a .npy array: {problem}") from None
    if len(shape) != 2:
        raise InputError(f"features file {path} holds a {len(shape)}-D array of shape {shape}; features are 2-D "
                         "(n_images, n_features)")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"features file {path} holds dtype {dtype}; features must be real numbers (float32)")
    expected = data_starts + int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(f"features file {path} is truncated or corrupted: its header claims shape {shape} of "
                         f"{dtype} ({expected:,} bytes), but the file has {actual:,}")
