"""`BGANHasher`: BGAN (Song et al., 2017) behind the same estimator interface as ITQ and the baselines."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import scipy.sparse
import torch

from bganhash._validation import InputError, check_features, check_fitted, check_positive_int
from bganhash.bgan.config import (
    BGANConfig,
    check_reconstruction_size,
    make_config,
    override_config,
    upgrade_config_document,
)
from bganhash.bgan.model import BGANNetworks, images_to_tensor, initialise_hash_layer
from bganhash.bgan.train import Trainer, TrainingData
from bganhash.features.backbones import create_backbone
from bganhash.features.config import FeatureConfig
from bganhash.features.transforms import transform_center, transform_features
from bganhash.hashers.base import Hasher
from bganhash.hashers.itq import ITQ
from bganhash.metrics import mean_average_precision
from bganhash.neighborhood.algorithm import neighborhood_structure
from bganhash.neighborhood.supervised import label_neighborhood

# Saved models of earlier versions name some learned state differently: former name -> current name.
FORMER_ARRAY_NAMES = {"input_centre_": "input_center_"}
FORMER_ATTRIBUTE_NAMES = {"image_size_": "reconstruction_size_"}


def default_reconstruction_size(height: int, width: int, max_size: int = 64) -> int:
    """The largest valid reconstruction side (8 * 2**k) not above the images' side nor `max_size`."""
    side = min(height, width, max(max_size, 8))
    if side < 8:
        raise InputError(f"images of {height}x{width} pixels are too small: the generator makes at least 8x8")
    return 8 * 2 ** int(np.log2(side // 8))


def fit_input_transform(X: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The transformed training features and the center to reuse on new features (None when uncentered)."""
    center = transform_center(X, method)
    return transform_features(X, method, center), center


class BGANHasher(Hasher):
    """Binary codes from a BGAN: an encoder + hash layer trained with the neighbourhood, content and
    adversarial losses against a generator and a discriminator (see DESIGN.md, "The method").

    Parameters
    ----------
    n_bits : int
        Code length.
    preset : {"auto", "cpu", "paper"}
        Starting configuration: "cpu" (hash head on frozen features, narrow generator and
        discriminator), "paper" (the paper's networks and schedule, for a GPU), "auto" picks "paper"
        when CUDA is available.
    random_state : int or None
        Seed of the initialisation and the batch order (overrides `train.seed`).
    config : BGANConfig, dict or None
        A full configuration instead of the preset (its n_bits is replaced by `n_bits`).
    feature_config : FeatureConfig, dict or None
        How features were extracted (backbone, size): `encode` uses it for images and paths.
    **overrides
        Any configuration field by name (`lr=1e-3`, `k1=50`, `use_adversarial=False`, ...).

    Attributes
    ----------
    networks_ : BGANNetworks, the trained encoder, hash layer, generator and discriminator.
    config_ : dict, the configuration actually used.
    history_ : list of dict, per-epoch mean losses, D(real), D(fake), bit balance, seconds (and val_map).
    input_center_ : (n_features,) float32 or None, center of the transformed training features.
    reconstruction_size_ : int or None, side of the reconstructed images (the generator's output).
    n_features_in_ : int.
    """

    name = "bgan"
    display_name = "BGAN"

    def __init__(self, n_bits: int = 32, preset: str = "auto", random_state: int | None = None,
                 config: BGANConfig | dict | None = None, feature_config: Any = None, **overrides: Any) -> None:
        super().__init__(n_bits, random_state)
        self.preset = preset
        self.config = config
        self.feature_config = feature_config
        self.overrides = overrides

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as plain JSON values (configs as dicts, overrides flattened in)."""
        config = self.config.to_dict() if isinstance(self.config, BGANConfig) else self.config
        features = self.feature_config
        if dataclasses.is_dataclass(features):
            features = dataclasses.asdict(features)
        overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in self.overrides.items()}
        return {"n_bits": self.n_bits, "preset": self.preset, "random_state": self.random_state,
                "config": config, "feature_config": features, **overrides}

    def resolved_config(self) -> BGANConfig:
        """The configuration `fit` will use: preset or `config`, then overrides, n_bits and the seed."""
        check_positive_int(self.n_bits, "n_bits")
        if self.config is None:
            config = make_config(self.preset, self.n_bits)
        elif isinstance(self.config, BGANConfig):
            config = self.config
        else:
            config = BGANConfig.from_dict(self.config)
        extra: dict[str, Any] = {"n_bits": self.n_bits}
        if self.random_state is not None:
            extra["seed"] = check_positive_int(self.random_state, "random_state", minimum=0)
        return override_config(config, **{**self.overrides, **extra})  # random_state wins over a `seed` override

    # ---- fit ---------------------------------------------------------------------------------------

    def fit(self, X: Any, images: Any = None, neighborhood: Any = None, labels: Any = None,
            validation: tuple | None = None, checkpoint_dir: str | os.PathLike | None = None,
            resume: bool = False, progress: bool = True) -> BGANHasher:
        """Train on features `X` (n, D); returns self.

        images : (n, H, W, 3) uint8, the reconstruction targets of the content and adversarial losses
            (and the encoder's input for encoder="vgg"/"finetune"). Required when those are on: an
            InputError says so, rather than silently training another method.
        neighborhood : (n, n) sparse or dense boolean positives of S; default: Algorithm 1 on X with
            the configured K1, K2 and feature transform (or the labels when `supervised`).
        labels : (n,) class ids for the supervised variant.
        validation : (X_query, y_query, X_database, y_database) to log validation mAP every epoch.
        checkpoint_dir, resume : write a checkpoint at the end of every beta stage; continue from it.
        """
        return self._fit(check_features(X, "X"), images=images, neighborhood=neighborhood, labels=labels,
                         validation=validation, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)

    def _fit(self, X: np.ndarray, images: Any = None, neighborhood: Any = None, labels: Any = None,
             validation: tuple | None = None, checkpoint_dir: str | os.PathLike | None = None,
             resume: bool = False, progress: bool = True) -> BGANHasher:
        """`fit` on validated features."""
        config = self.resolved_config()
        n = X.shape[0]
        if resume and checkpoint_dir is None:
            raise InputError("resume=True needs checkpoint_dir=<the directory of an earlier run's checkpoints>")
        if config.train.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device={config.train.device!r} but CUDA is not available; use preset='cpu' or "
                             "device='cpu'")
        if n < 2:
            raise InputError(f"BGAN needs at least 2 training images; got {n}")
        pixels = config.network.encoder != "head"
        if images is None and (config.loss.needs_images or pixels):
            raise InputError(
                "images=None, but the content and adversarial losses (and pixel encoders) need the training "
                "images: pass images=(n, H, W, 3) uint8, or use_content=False, use_adversarial=False"
            )
        reconstruction_size, targets = None, None
        if images is not None:
            images = check_images(images, "images", n_rows=n)
            reconstruction_size = config.network.reconstruction_size or default_reconstruction_size(
                *images.shape[1:3], config.network.max_reconstruction_size)
            targets = images_to_tensor(images, check_reconstruction_size(reconstruction_size))
        inputs, center = fit_input_transform(X, config.neighborhood.feature_transform)
        similarity = self._similarity(inputs, neighborhood, labels, config, progress)
        torch.manual_seed(config.train.seed)
        networks = self._build_networks(config, X.shape[1], reconstruction_size or 8, pretrained=True)
        if config.network.hash_init == "itq":
            initialise_from_itq(networks, inputs, config.n_bits, config.train.seed)
        networks.to(config.train.device)
        data = TrainingData(targets if pixels else torch.from_numpy(inputs), targets, similarity)
        evaluate = None if validation is None else self._validation_scorer(validation, config, center, X.shape[1])
        trainer = Trainer(config, networks, data, checkpoint_dir, progress, evaluate)
        self.history_ = trainer.fit(resume=resume)
        self.networks_ = networks
        self.config_ = config.to_dict()
        self.input_center_ = center
        self.reconstruction_size_ = reconstruction_size
        self.n_features_in_ = int(X.shape[1])
        return self

    def _similarity(self, inputs: np.ndarray, neighborhood: Any, labels: Any, config: BGANConfig,
                    progress: bool = False):
        """S's positives, as an (n, n) boolean CSR matrix."""
        n = inputs.shape[0]
        if neighborhood is not None:
            matrix = scipy.sparse.csr_matrix(neighborhood)
            if matrix.shape != (n, n):
                raise InputError(f"neighborhood must be ({n}, {n}) for {n} training images; got {matrix.shape}")
            return (matrix != 0).tocsr()
        if config.neighborhood.supervised:
            if labels is None:
                raise InputError("supervised=True builds S from labels: pass labels=(n,) class ids to fit")
            return label_neighborhood(labels)
        k1, k2 = min(config.neighborhood.k1, n - 1), min(config.neighborhood.k2, n)
        return neighborhood_structure(inputs, k1=k1, k2=k2, knn_method=config.neighborhood.knn_method,
                                      nprobe=config.neighborhood.nprobe, progress=progress)

    def _build_networks(self, config: BGANConfig, n_features: int, reconstruction_size: int,
                        pretrained: bool) -> BGANNetworks:
        backbone, input_size = None, 224
        if config.network.encoder == "finetune":
            backbone = create_backbone(config.network.backbone, pretrained=pretrained)
            input_size = self._feature_config().image_size
        return BGANNetworks(config, n_features, reconstruction_size, backbone, input_size)

    def _validation_scorer(self, validation: tuple, config: BGANConfig, center: np.ndarray | None, n_features: int):
        """A callback giving mAP@all of the validation queries against the validation database."""
        if not (isinstance(validation, (tuple, list)) and len(validation) == 4):
            raise InputError("validation must be (X_query, y_query, X_database, y_database)")
        x_query, y_query, x_database, y_database = validation
        method = config.neighborhood.feature_transform
        queries = transform_features(check_features(x_query, "validation X_query", n_features), method, center)
        database = transform_features(check_features(x_database, "validation X_database", n_features), method, center)

        def score(networks: BGANNetworks) -> float:
            return mean_average_precision(feature_codes(networks, queries), feature_codes(networks, database),
                                          np.asarray(y_query), np.asarray(y_database))

        return score

    # ---- encode ------------------------------------------------------------------------------------

    @property
    def encodes_pixels(self) -> bool:
        """True for the whole-encoder modes ("vgg", "finetune"): `encode` takes images, not features."""
        check_fitted(self, "networks_")
        return bool(self.networks_.encodes_pixels)

    @property
    def pixel_size(self) -> int:
        """The side, in pixels, of the images a pixel encoder reads (the reconstruction side)."""
        check_fitted(self, "networks_")
        return int(self.reconstruction_size_)

    def encode(self, inputs: Any, batch_size: int = 1024) -> np.ndarray:
        """Codes as int8 (n, n_bits) in {-1, +1} (sgn(0) = +1): of backbone features (n, D), or, for the
        pixel encoders, of images (n, pixel_size, pixel_size, 3) uint8. Images and paths of any size go
        through `bganhash.pipeline.ImagePipeline`, which extracts features or resizes first."""
        check_fitted(self, "networks_")
        batch_size = check_positive_int(batch_size, "batch_size")
        array = inputs if isinstance(inputs, np.ndarray) else np.asarray(inputs)
        if self.encodes_pixels:
            if array.ndim == 2:
                raise InputError(f"this BGAN encodes pixels (encoder={self.config_['network']['encoder']!r}); pass "
                                 "images (n, H, W, 3) uint8, not features")
            images = check_images(array, "images")
            if images.shape[1:3] != (self.pixel_size, self.pixel_size):
                raise InputError(f"this BGAN encodes {self.pixel_size}x{self.pixel_size} images; got "
                                 f"{images.shape[1]}x{images.shape[2]} (ImagePipeline.encode_images resizes)")
            return self._encode_images(images, batch_size)
        if array.ndim != 2:
            raise InputError(f"this BGAN encodes features (n, {self.n_features_in_}); got shape {array.shape} "
                             "(images go through ImagePipeline.encode_images)")
        return self._encode_features(array, batch_size)

    def _encode_features(self, X: Any, batch_size: int) -> np.ndarray:
        X = check_features(X, "X", n_features=self.n_features_in_)
        inputs = transform_features(X, self.config_["neighborhood"]["feature_transform"], self.input_center_)
        return feature_codes(self.networks_, inputs, batch_size)

    def _encode_images(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        device = next(self.networks_.parameters()).device
        chunks = [self.networks_.codes(images_to_tensor(images[i:i + batch_size], self.reconstruction_size_).to(device))
                  for i in range(0, len(images), batch_size)]
        return torch.cat(chunks).cpu().numpy() if chunks else np.empty((0, self.n_bits), np.int8)

    def _feature_config(self) -> FeatureConfig:
        if self.feature_config is None:
            return FeatureConfig()
        if isinstance(self.feature_config, FeatureConfig):
            return self.feature_config
        return FeatureConfig(**self.feature_config)

    # ---- persistence (Hasher.save / Hasher.load write these) ---------------------------------------

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"networks_.{k}": v.detach().cpu().numpy() for k, v in self.networks_.state_dict().items()}
        if self.input_center_ is not None:
            arrays["input_center_"] = self.input_center_
        attributes = {"config_": self.config_, "history_": self.history_,
                      "reconstruction_size_": self.reconstruction_size_, "n_features_in_": self.n_features_in_}
        return arrays, attributes

    def _set_state(self, arrays: dict[str, np.ndarray], attributes: dict[str, Any]) -> None:
        arrays = _current_names(arrays, FORMER_ARRAY_NAMES)
        attributes = _current_names(attributes, FORMER_ATTRIBUTE_NAMES)
        self.config_ = upgrade_config_document(attributes["config_"])
        self.history_ = attributes.get("history_", [])
        self.reconstruction_size_ = attributes.get("reconstruction_size_")
        self.n_features_in_ = int(attributes["n_features_in_"])
        self.input_center_ = arrays.get("input_center_")
        config = BGANConfig.from_dict(self.config_)
        networks = self._build_networks(config, self.n_features_in_, self.reconstruction_size_ or 8, pretrained=False)
        prefix = "networks_."
        state = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(prefix)}
        try:
            networks.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(f"saved BGAN weights do not match its config: {exc}") from exc
        self.networks_ = networks.eval()

    def _project(self, X: np.ndarray) -> np.ndarray:
        inputs = transform_features(X, self.config_["neighborhood"]["feature_transform"], self.input_center_)
        with torch.no_grad():
            return self.networks_.project(torch.from_numpy(inputs)).numpy()


def initialise_from_itq(networks: BGANNetworks, inputs: np.ndarray, n_bits: int, seed: int) -> None:
    """Fit ITQ on the training inputs and start the hash layer as its projection, scaled to unit standard
    deviation (so tanh(beta z) starts neither saturated nor flat): training starts from ITQ's codes."""
    itq = ITQ(n_bits, random_state=seed).fit(inputs)
    mean, projection = itq.mean_.astype(np.float32), itq.components_ @ itq.rotation_.astype(np.float32)
    projection = projection / (float(np.std((inputs - mean) @ projection)) or 1.0)
    initialise_hash_layer(networks.hash_layer, projection, -(mean @ projection))


def feature_codes(networks: BGANNetworks, inputs: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """sgn codes of transformed features through the head encoder, in batches."""
    was_training = networks.training
    networks.eval()
    device = next(networks.parameters()).device
    chunks = [networks.codes(torch.from_numpy(inputs[i:i + batch_size]).to(device))
              for i in range(0, len(inputs), batch_size)]
    networks.train(was_training)
    return torch.cat(chunks).cpu().numpy()


def _current_names(state: dict[str, Any], former_names: dict[str, str]) -> dict[str, Any]:
    """Saved state with the entries saved under a former name under their current name."""
    return {former_names.get(key, key): value for key, value in state.items()}


def check_images(images: Any, name: str, n_rows: int | None = None) -> np.ndarray:
    """A (n, H, W, 3) uint8 array, or InputError naming what is wrong."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"{name} must be a (n, H, W, 3) uint8 array; got {array.dtype} with shape {array.shape}")
    if n_rows is not None and array.shape[0] != n_rows:
        raise InputError(f"{name} has {array.shape[0]} images but X has {n_rows} rows")
    return array
