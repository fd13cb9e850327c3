"""Images or paths -> backbone features -> codes: one unit (feature configuration + fitted hasher), saved and
loaded whole. Feature extraction, collections, the CLI's `encode` and `search` and the service all encode
images through it, so that queries are preprocessed exactly as the indexed images were.

A saved pipeline is a hasher's directory (hasher.json + hasher.safetensors) with `pipeline.json` beside
them naming the feature configuration; hasher.json checksums every other file, pipeline.json included, and
itself. A hasher directory saved without pipeline.json still loads (its own `feature_config` when it has one,
else the default), and so does one saved before checksums (with a warning that it is unverified).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import read_verified_json, write_verified_json
from bganhash._validation import InputError, check_fitted, check_image_list
from bganhash._version import __version__
from bganhash.datasets.base import Dataset, FileSource
from bganhash.datasets.images import resize_square
from bganhash.features.config import FeatureConfig
from bganhash.hashers.base import Hasher, saved_files
from bganhash.registry import load_hasher

FORMAT_NAME = "bganhash-pipeline"
FORMAT_VERSION = 2  # 2: pipeline.json checksums itself, and the hasher's hasher.json checksums pipeline.json
PIPELINE_FILE = "pipeline.json"


class ImagePipeline:
    """A fitted hasher and the feature extraction in front of it.

    `encode_features(X)` for features, `encode_images(images)` for decoded (H, W, 3) uint8 images,
    `encode_paths(paths)` for image files and `encode_dataset(dataset)` for a Dataset; pixel encoders
    (BGAN with encoder="vgg"/"finetune") get the images resized to their input side instead of features.
    """

    def __init__(self, hasher: Hasher, feature_config: FeatureConfig | dict | None = None, *,
                 features_only: bool = False) -> None:
        self.hasher = hasher
        self.feature_config = _feature_config(feature_config if feature_config is not None
                                              else getattr(hasher, "feature_config", None))
        # a hasher saved on its own, with no record of the features it was fitted on, encodes features only
        self.features_only = features_only

    def __repr__(self) -> str:
        config = self.feature_config
        return f"ImagePipeline({self.hasher!r}, backbone={config.backbone!r}, image_size={config.image_size})"

    @property
    def n_bits(self) -> int:
        return int(self.hasher.n_bits)

    @property
    def encodes_pixels(self) -> bool:
        """True when the hasher reads pixels itself (a whole-encoder BGAN), not backbone features."""
        return bool(getattr(self.hasher, "encodes_pixels", False))

    # ---- features --------------------------------------------------------------------------------

    def features_of_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone features (n, D) float32 of decoded images, preprocessed as the indexed images were."""
        from bganhash.features.extract import features_of_images

        self._check_knows_features()
        return features_of_images(images, self.feature_config)  # which checks the images

    def features_of_dataset(self, dataset: Any, progress: bool = False) -> np.ndarray:
        """Backbone features of every image of a Dataset, in batches (not cached: see extract_features)."""
        from bganhash.features.extract import compute_features

        self._check_knows_features()
        return compute_features(dataset, self.feature_config, progress=progress)

    # ---- codes -----------------------------------------------------------------------------------

    def encode_features(self, X: Any) -> np.ndarray:
        """Codes (n, n_bits) int8 in {-1,+1} of backbone features."""
        if self.encodes_pixels:
            raise InputError(f"{type(self.hasher).__name__} encodes pixels; pass images or image paths, not features")
        return np.asarray(self.hasher.encode(X), dtype=np.int8)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Codes (n, n_bits) int8 of decoded (H, W, 3) uint8 images (any sizes)."""
        images = check_image_list(images)
        if self.encodes_pixels:
            return self._encode_pixels(images)
        return self.encode_features(self.features_of_images(images))

    def encode_dataset(self, dataset: Any, progress: bool = False) -> np.ndarray:
        """Codes of every image of a Dataset, in its order."""
        if self.encodes_pixels:
            return np.asarray(self.hasher.encode(dataset.to_array(size=self.hasher.pixel_size)), dtype=np.int8)
        return self.encode_features(self.features_of_dataset(dataset, progress))

    def encode_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """Codes of image files given by path (absolute, or relative to the working directory)."""
        return self.encode_dataset(path_dataset(paths), progress)

    def _check_knows_features(self) -> None:
        if self.features_only:
            raise InputError(f"this {type(self.hasher).__name__} was saved without the feature configuration it was "
                             "fitted on, so it encodes features only: give a .npy file of features, not images")

    def _encode_pixels(self, images: list[np.ndarray]) -> np.ndarray:
        side = self.hasher.pixel_size
        return np.asarray(self.hasher.encode(np.stack([resize_square(image, side) for image in images])), np.int8)

    # ---- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the feature configuration (pipeline.json), then the hasher, whose hasher.json checksums
        pipeline.json with its own files, to directory `path`; returns it."""
        check_fitted(self.hasher, "n_features_in_")
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"cannot save a pipeline to {directory}: it exists and is not a directory")
        write_verified_json(directory / PIPELINE_FILE, {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "bganhash_version": __version__,
            "feature_config": dataclasses.asdict(self.feature_config),
        })
        return self.hasher.save(directory, covering=[PIPELINE_FILE])

    @classmethod
    def load(cls, path: str | os.PathLike, expected: str | None = None) -> ImagePipeline:
        """Read a pipeline (or a bare hasher directory) written by `save`, every file checked against the
        checksums in hasher.json; `expected` names the hasher it must hold (see `bganhash.registry.load_hasher`)."""
        directory = Path(path)
        hasher = load_hasher(directory, expected)
        config = None
        listed = saved_files(directory)  # None: a hasher saved before checksums, which lists nothing
        if listed is not None and PIPELINE_FILE not in listed and (directory / PIPELINE_FILE).exists():
            raise InputError(f"{directory / PIPELINE_FILE} is not among the files {directory / 'hasher.json'} "
                             "verifies (a bare hasher was saved over a pipeline, or it was added): remove it, "
                             "or save the pipeline again")
        covered = bool(listed) and PIPELINE_FILE in listed
        if covered or (directory / PIPELINE_FILE).exists():
            document = read_verified_json(directory / PIPELINE_FILE, FORMAT_NAME, FORMAT_VERSION, "a saved pipeline",
                                          verified_since=2, covered=covered)
            config = document.get("feature_config")
        features_only = config is None and getattr(hasher, "feature_config", None) is None
        try:
            return cls(hasher, config, features_only=features_only)
        except InputError as exc:
            raise InputError(f"{directory / PIPELINE_FILE} has an unusable feature_config: {exc}") from None


def path_dataset(paths: Sequence[str | os.PathLike]) -> Dataset:
    """A Dataset over image files given by path (absolute, or relative to the working directory)."""
    members = [str(path) for path in paths]
    if not members:
        raise InputError("no image paths to encode")
    missing = [m for m in members if not Path(m).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"no image file at {missing[0]}{more}")
    return Dataset("paths", FileSource(Path("."), members), members)


def _feature_config(config: FeatureConfig | dict | None) -> FeatureConfig:
    if config is None:
        return FeatureConfig()
    if isinstance(config, FeatureConfig):
        return config.validate()
    if not isinstance(config, dict):
        raise InputError(f"feature_config must be a FeatureConfig or a dict; got {type(config).__name__}")
    try:
        return FeatureConfig(**config).validate()
    except TypeError as exc:
        raise InputError(f"feature_config {config!r}: {exc}") from None

