"""Image features for the neighbourhood: decoding pipelined with batched inference, cached on disk.

Worker threads decode each image at the size the backbone needs and resize it (Pillow releases the
GIL) while the runtime (features.runtime) infers the previous batch. Features are cached per dataset
(keyed by its fingerprint, backbone, input size and preprocessing) or, for collections, per image file
(keyed by content); features computed elsewhere come in through a `.npy` file.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from bganhash._progress import progress_bar
from bganhash._system import usable_cpus
from bganhash._validation import InputError, check_image_list
from bganhash.datasets.base import Dataset
from bganhash.features.cache import feature_cache_path, read_cache, write_cache
from bganhash.features.config import FeatureConfig
from bganhash.features.runtime import FeatureEngine, feature_engine
from bganhash.features.sharding import is_main_process, process_group, sharded

PREFETCH_BATCHES = 2  # batches decoded ahead of the one being inferred
Batch = tuple[np.ndarray, np.ndarray]  # (rows, resized pixels)


def engine_for(config: FeatureConfig) -> FeatureEngine:
    """The inference engine `config` asks for (backbone, input size, runtime, precision)."""
    return feature_engine(config.backbone, config.image_size, config.runtime, config.precision)


def resize_pixels(image: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """An (H, W, 3) uint8 image resized, without cropping, to float32 (size, size, 3) in [0, 255].

    Resampled in float per channel, so no rounding to uint8: bilinear (antialiased when shrinking) equals
    torch's `interpolate(..., antialias=True)` to 1e-5. Other modes go through torch as before."""
    if image.shape[:2] == (size, size):
        return image.astype(np.float32)
    if mode != "bilinear":
        return _torch_resize(image, size, mode)
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                .resize((size, size), Image.Resampling.BILINEAR) for c in range(3)]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


def _torch_resize(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    smooth = mode in ("bilinear", "bicubic")
    shrinking = max(image.shape[:2]) > size
    resized = F.interpolate(batch, size=(size, size), mode=mode, align_corners=False if smooth else None,
                            antialias=smooth and shrinking)
    if mode == "bicubic":
        resized = resized.clamp_(0.0, 255.0)
    return resized[0].permute(1, 2, 0).numpy()


def features_of_images(images: Sequence[np.ndarray], config: FeatureConfig) -> np.ndarray:
    """Pooled features (n, num_features) float32 of decoded (H, W, 3) uint8 images, in batches of
    `config.batch_size`: the one resize + inference every extraction goes through."""
    images = check_image_list(images)
    engine = engine_for(config)
    pixels = [resize_pixels(image, config.image_size, config.resize) for image in images]
    return np.concatenate([infer(engine, np.stack(pixels[start:start + config.batch_size]), config.flip)
                           for start in range(0, len(pixels), config.batch_size)])


def infer(engine: FeatureEngine, pixels: np.ndarray, flip: bool = False) -> np.ndarray:
    """The engine's features of a batch of resized pixels; with `flip`, the mean of those of the images
    and of their mirror images (left-right), so that a picture and its mirror get one code."""
    features = engine(pixels)
    if flip:
        features = (features + engine(np.ascontiguousarray(pixels[:, :, ::-1]))) / 2
    return features


def compute_features(dataset: Any, config: FeatureConfig, progress: bool = True,
                     indices: Sequence[int] | None = None) -> np.ndarray:
    """Run the backbone over the images of `dataset` (all, or `indices`), decoding ahead in threads:
    float32 (n, num_features), row i for the i-th image asked for. Under torchrun the ranks share the
    work (features.sharding) and each receives every row."""
    wanted = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    return sharded(lambda rows: _compute(dataset, config, progress, rows), wanted, config.batch_size)


def _compute(dataset: Any, config: FeatureConfig, progress: bool, wanted: np.ndarray) -> np.ndarray:
    engine = engine_for(config)
    features: np.ndarray | None = None
    filled = 0
    rank, size = process_group()
    desc = f"features {config.backbone}@{config.image_size} ({engine.runtime}" + (
        f", rank {rank} of {size})" if size > 1 else ")")
    with progress_bar(len(wanted), desc, enabled=progress) as bar:
        for rows, pixels in prepared_batches(dataset, config, wanted):
            batch = infer(engine, pixels, config.flip)
            if features is None:
                features = np.empty((len(wanted), batch.shape[1]), dtype=np.float32)
            features[rows] = batch
            filled += len(rows)
            bar.update(len(rows))
    if features is None or filled != len(wanted):
        raise InputError(f"the dataset gave {filled} of {len(wanted)} images")
    return features


def prepared_batches(dataset: Any, config: FeatureConfig, wanted: np.ndarray) -> Iterator[Batch]:
    """(rows into `wanted`, resized pixels (n, s, s, 3)) per batch, decoded by a thread pool up to
    PREFETCH_BATCHES batches ahead of the consumer."""
    size, mode = config.image_size, config.resize
    if not isinstance(dataset, Dataset):  # a duck-typed dataset: batches as it yields them, resized in threads
        yield from _resized_batches(dataset, config, wanted)
        return

    def prepare(index: int) -> np.ndarray:
        return resize_pixels(dataset.read_image(int(index), min_side=size), size, mode)

    pool = ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="bganhash-decode")
    pending: deque[tuple[np.ndarray, list[Future]]] = deque()
    try:
        for start in range(0, len(wanted), config.batch_size):
            rows = np.arange(start, min(start + config.batch_size, len(wanted)))
            pending.append((rows, [pool.submit(prepare, wanted[row]) for row in rows]))
            if len(pending) > PREFETCH_BATCHES:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(rows: np.ndarray, futures: list[Future]) -> tuple[np.ndarray, np.ndarray]:
    return rows, np.stack([future.result() for future in futures])


def _resized_batches(dataset: Any, config: FeatureConfig, wanted: np.ndarray) -> Iterator[Batch]:
    position = {int(index): row for row, index in enumerate(wanted)}
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        for indices, images in dataset.iter_batches(config.batch_size, wanted):
            rows = np.array([position[int(i)] for i in indices], dtype=np.int64)
            resized = pool.map(lambda image: resize_pixels(image, config.image_size, config.resize), images)
            yield rows, np.stack(list(resized))


def extract_features(dataset: Any, config: FeatureConfig | None = None, *, cache: bool | str = True,
                     progress: bool = True) -> np.ndarray:
    """Features of every image of `dataset` (row i = image i), float32 (n, D).

    `cache`: True (or "dataset") keeps one file per dataset; "images" keeps features per image file, keyed
    by its content, so an overlapping folder or a second index with other settings re-extracts only what is
    new; False computes afresh."""
    config = (config or FeatureConfig()).validate()
    n_images = len(dataset)
    if n_images == 0:
        raise InputError(f"dataset {getattr(dataset, 'name', '')!r} has no images")
    if cache == "images":
        from bganhash.features.image_cache import features_through_image_cache

        return features_through_image_cache(dataset, config, compute_features, progress)
    if cache not in (True, False, "dataset"):
        raise InputError(f"cache={cache!r} must be True, False, 'dataset' or 'images'")
    path = feature_cache_path(dataset, config) if cache else None
    if path is not None and (cached := read_cache(path, n_images)) is not None:
        return cached
    started = time.perf_counter()
    features = compute_features(dataset, config, progress)
    if path is not None and is_main_process():
        write_cache(path, features, dataset, config, time.perf_counter() - started)
    return features
