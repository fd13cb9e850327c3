"""Image features for the neighbourhood: batched extraction with a pretrained backbone, cached on disk.

Features are keyed by (dataset fingerprint, backbone, input size, preprocessing), so a second run
reads them back instantly; features computed elsewhere (CLIP, ResNet, ...) come in through a `.npy` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bganhash import __version__
from bganhash._io import atomic_write, cache_root, write_json
from bganhash._system import usable_cpus
from bganhash._validation import InputError, check_features, check_positive_int
from bganhash.backbones import Backbone, create_backbone, list_backbones

logger = logging.getLogger(__name__)

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
TRANSFORMS = ("none", "l2", "sqrt_l2_center")
PREPROCESSING_VERSION = 1  # bump when preprocess_images changes, so old caches stop matching


@dataclass
class FeatureConfig:
    """How features are extracted.

    image_size=224 by default, EfficientNet-Lite0's own: on the CIFAR-10 validation split (1,000
    queries carved from the paper's training images) BGAN at 32 bits scored mAP 0.447 against 0.415 at
    128 px, and ITQ 0.335 against 0.313 (benchmarks/bench_feature_choice.py, 2 seeds). 128 px extracts
    about 3x faster on a CPU; pass it where time matters more than the last points.
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    batch_size: int = 64
    resize: str = "bilinear"

    def validate(self) -> FeatureConfig:
        """Return self, or raise InputError naming the bad field."""
        if self.backbone not in list_backbones():
            raise InputError(f"backbone={self.backbone!r} is unknown; known backbones: {', '.join(list_backbones())}")
        check_positive_int(self.image_size, "image_size", minimum=32)
        check_positive_int(self.batch_size, "batch_size")
        if self.resize not in RESIZE_MODES:
            raise InputError(f"resize={self.resize!r} must be one of {', '.join(RESIZE_MODES)}")
        return self


def feature_cache_dir() -> Path:
    """Folder of cached features: $BGANHASH_CACHE/features, else ~/.cache/bganhash/features."""
    return cache_root() / "features"


def preprocessing_key(config: FeatureConfig) -> str:
    """Short hash of everything in preprocessing besides the size (resize mode, scaling, code version)."""
    description = {"resize": config.resize, "antialias": "when downscaling", "scaling": "backbone input_mean/std",
                   "version": PREPROCESSING_VERSION}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:10]


def feature_cache_path(dataset: Any, config: FeatureConfig | None = None) -> Path:
    """Where `extract_features(dataset, config)` caches its result."""
    config = (config or FeatureConfig()).validate()
    fingerprint = str(dataset.fingerprint())
    if not re.fullmatch(r"[A-Za-z0-9._]{1,64}", fingerprint):
        fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    name = f"{fingerprint}-{config.backbone}-{config.image_size}-{preprocessing_key(config)}.npy"
    return feature_cache_dir() / name


def preprocess_images(images: Sequence[np.ndarray], image_size: int, mean: Sequence[float],
                      std: Sequence[float], resize: str = "bilinear") -> torch.Tensor:
    """uint8 (H, W, 3) images -> normalised float (n, 3, image_size, image_size), resized without cropping."""
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            shape = getattr(image, "shape", None)
            raise InputError(f"images must be uint8 arrays of shape (H, W, 3); got {type(image).__name__} {shape}")
    if len({image.shape for image in images}) == 1:
        batch = _resize(_to_float(np.stack(images)), image_size, resize)
    else:
        batch = torch.cat([_resize(_to_float(image[None]), image_size, resize) for image in images])
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def _to_float(images: np.ndarray) -> torch.Tensor:
    writable = np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"])  # torch refuses read-only arrays
    return torch.from_numpy(writable).permute(0, 3, 1, 2).float().div_(255.0)


def _resize(batch: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    height, width = batch.shape[-2:]
    if (height, width) == (size, size):
        return batch
    smooth = mode in ("bilinear", "bicubic")
    resized = F.interpolate(batch, size=(size, size), mode=mode, align_corners=False if smooth else None,
                            antialias=smooth and (height > size or width > size))
    return resized.clamp_(0.0, 1.0) if mode == "bicubic" else resized


@contextlib.contextmanager
def _cpu_threads() -> Iterator[None]:
    """Use at most the CPUs this process may run on, and restore torch's setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, usable_cpus())))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compute_features(dataset: Any, backbone: Backbone, config: FeatureConfig, progress: bool = True) -> np.ndarray:
    """Run `backbone` over every image of `dataset` in batches: float32 (len(dataset), num_features)."""
    n_images = len(dataset)
    features = np.empty((n_images, backbone.num_features), dtype=np.float32)
    filled = np.zeros(n_images, dtype=bool)
    bar = tqdm(total=n_images, unit="img", desc=f"features {config.backbone}@{config.image_size}",
               disable=None if progress else True, smoothing=0.1)
    with _cpu_threads(), torch.inference_mode(), bar:
        for indices, images in dataset.iter_batches(config.batch_size):
            indices = np.asarray(indices, dtype=np.int64)
            batch = preprocess_images(images, config.image_size, backbone.input_mean, backbone.input_std,
                                      config.resize)
            batch = batch.contiguous(memory_format=torch.channels_last)  # about 1.5x faster on CPU than NCHW
            features[indices] = backbone.forward_features(batch).numpy()
            filled[indices] = True
            bar.update(len(indices))
    if not filled.all():
        raise InputError(f"dataset.iter_batches skipped {int((~filled).sum())} of {n_images} images")
    return features


def extract_features(dataset: Any, config: FeatureConfig | None = None, *, cache: bool = True,
                     progress: bool = True) -> np.ndarray:
    """Features of every image of `dataset` (row i = image i), float32 (n, D); cached on disk when `cache`."""
    config = (config or FeatureConfig()).validate()
    n_images = len(dataset)
    if n_images == 0:
        raise InputError(f"dataset {getattr(dataset, 'name', '')!r} has no images")
    path = feature_cache_path(dataset, config) if cache else None
    if path is not None and (cached := _read_cache(path, n_images)) is not None:
        return cached
    started = time.perf_counter()
    backbone = create_backbone(config.backbone).to(memory_format=torch.channels_last)
    features = compute_features(dataset, backbone, config, progress)
    if path is not None:
        _write_cache(path, features, dataset, config, time.perf_counter() - started)
    return features


def _read_cache(path: Path, n_images: int) -> np.ndarray | None:
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


def _write_cache(path: Path, features: np.ndarray, dataset: Any, config: FeatureConfig, seconds: float) -> None:
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
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"features file {path} cannot be read as a plain .npy array: {exc}") from exc
    features = check_features(array, name=f"features file {path}")
    if n_expected is not None and features.shape[0] != n_expected:
        raise InputError(f"features file {path} has {features.shape[0]} rows, but the dataset has {n_expected} images")
    return features


def transform_features(X: np.ndarray, method: str = "none", centre: np.ndarray | None = None) -> np.ndarray:
    """Feature transform before the cosine K-NN: "none", "l2" (unit rows), or "sqrt_l2_center".

    "sqrt_l2_center": signed square root, L2-normalise each row, subtract a centre: `centre` when
    given (the training centre from `transform_centre`, so new rows are transformed like the training
    rows), else the mean transformed row of X itself.
    """
    if method not in TRANSFORMS:
        raise InputError(f"method={method!r} must be one of {', '.join(TRANSFORMS)}")
    rows = _scaled_rows(check_features(X), method)
    if method != "sqrt_l2_center":
        return rows
    if centre is None:
        centre = rows.mean(axis=0, dtype=np.float64)
    return (rows - centre).astype(np.float32, copy=False)


def transform_centre(X: np.ndarray, method: str) -> np.ndarray | None:
    """The centre that `method` subtracts, measured on training features X (None if it does not centre)."""
    if method != "sqrt_l2_center":
        return None
    return _scaled_rows(check_features(X), method).mean(axis=0, dtype=np.float64).astype(np.float32)


def _scaled_rows(X: np.ndarray, method: str) -> np.ndarray:
    """Signed square root (for "sqrt_l2_center"), then unit rows (for "l2" and "sqrt_l2_center")."""
    if method == "none":
        return X
    if method == "sqrt_l2_center":
        X = np.sign(X) * np.sqrt(np.abs(X))
    return _l2_normalise(X).astype(np.float32, copy=False)


def _l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(np.float32).tiny)
