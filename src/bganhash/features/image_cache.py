"""Features per image file, keyed by the file's content: a second index of the same photos with other
settings, or of an overlapping folder, re-extracts nothing it already has.

One folder per (backbone, input size, preprocessing); each extraction adds one shard file holding the
16-byte content digests and float32 features of the images it computed, written atomically. A shard
that does not read back is ignored (its images are extracted again), never trusted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from bganhash._io import atomic_write
from bganhash._system import usable_cpus
from bganhash.features.cache import feature_cache_dir, preprocessing_key
from bganhash.features.config import FeatureConfig
from bganhash.features.sharding import is_main_process

logger = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"


def image_cache_dir(config: FeatureConfig) -> Path:
    """Folder of per-image features for `config`: <feature cache>/images/<backbone>-<size>-<preprocessing>."""
    return feature_cache_dir() / "images" / f"{config.backbone}-{config.image_size}-{preprocessing_key(config)}"


class ImageFeatureCache:
    """Features of image files seen before, by content digest (read once, then added to shard by shard)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._rows: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        for path in sorted(directory.glob(f"{SHARD_PREFIX}*.safetensors")) if directory.is_dir() else []:
            self._load_shard(path)

    def __len__(self) -> int:
        return len(self._rows)

    def _load_shard(self, path: Path) -> None:
        try:
            arrays = safetensors.numpy.load(path.read_bytes())
            digests, features = arrays["digests"], arrays["features"]
        except Exception as exc:  # a damaged shard costs a re-extraction, nothing more
            logger.warning("ignoring unreadable feature shard %s (%s)", path, exc)
            return
        sound = (digests.dtype == np.uint8 and digests.ndim == 2 and features.dtype == np.float32
                 and features.ndim == 2 and len(digests) == len(features) and bool(np.isfinite(features).all()))
        if not sound:
            logger.warning("ignoring feature shard %s: unexpected arrays", path)
            return
        shard = len(self._shards)
        self._shards.append(features)
        for row, digest in enumerate(digests):
            self._rows[digest.tobytes()] = (shard, row)

    def get(self, digest: bytes) -> np.ndarray | None:
        """The cached features of the file with this content digest, or None."""
        where = self._rows.get(digest)
        return None if where is None else self._shards[where[0]][where[1]]

    def add(self, digests: list[bytes], features: np.ndarray) -> None:
        """Store the features of newly extracted files as one new shard."""
        if not digests:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{SHARD_PREFIX}{time.time_ns():020d}-{os.getpid()}.safetensors"
        arrays = {"digests": np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), -1),
                  "features": np.ascontiguousarray(features, dtype=np.float32)}
        with atomic_write(self.directory / name, "wb") as handle:
            handle.write(safetensors.numpy.save(arrays))
        shard = len(self._shards)
        self._shards.append(arrays["features"])
        for row, digest in enumerate(digests):
            self._rows[digest] = (shard, row)


def features_through_image_cache(dataset: Any, config: FeatureConfig, compute: Callable[..., np.ndarray],
                                 progress: bool = True) -> np.ndarray:
    """Features of every image of `dataset`, taking those whose file content was seen before from the cache
    and extracting (then caching, with `compute(dataset, config, progress, indices)`) only the rest."""
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:  # hashlib releases the GIL
        digests = list(pool.map(dataset.content_digest, range(len(dataset))))
    cache = ImageFeatureCache(image_cache_dir(config))
    known = [cache.get(digest) for digest in digests]
    missing = [index for index, features in enumerate(known) if features is None]
    if missing:
        logger.info("%d of %d images are new to the feature cache", len(missing), len(dataset))
    fresh = compute(dataset, config, progress, indices=missing) if missing else None
    if fresh is not None and is_main_process():
        unique: dict[bytes, int] = {}
        for row, index in enumerate(missing):
            unique.setdefault(digests[index], row)
        cache.add(list(unique), fresh[list(unique.values())])
    width = (fresh if fresh is not None else known[0]).shape[-1]
    features = np.empty((len(dataset), width), dtype=np.float32)
    for index, cached in enumerate(known):
        if cached is not None:
            features[index] = cached
    if fresh is not None:
        features[missing] = fresh
    return features
