"""BGAN configuration: one dataclass per concern, JSON round-trip, and the `cpu` / `paper` presets.

Field defaults are the `cpu` preset (a hash head on cached frozen features); `paper` overrides them
with the paper's Section 4.1.4 values and the widths of Section 3.2. Every difference between the
paper and the authors' public code is a field; the defaults are the measured better choice (the
measurement is noted beside the field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bganhash._validation import InputError
from bganhash.features.transforms import TRANSFORMS

PRESETS = ("cpu", "paper")
ENCODERS = ("head", "vgg", "finetune")
HASH_INITS = ("random", "itq")
ACTIVATIONS = ("app", "tanh", "two_step")
OPTIMIZERS = ("adam", "sgd")


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r} must be one of {', '.join(repr(c) for c in choices)}")


def _check_number(value: Any, name: str, minimum: float, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        rule = ">=" if inclusive else ">"
        raise InputError(f"{name}={value!r} must be a number {rule} {minimum}")


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_sequence(values: Any, name: str) -> None:
    if not isinstance(values, tuple):  # lists became tuples on construction
        raise InputError(f"{name}={values!r} must be a list (JSON, in brackets), e.g. {name}=[2, 4]")


def _check_int_tuple(values: tuple, name: str, minimum: int, allow_empty: bool) -> None:
    _check_sequence(values, name)
    if not allow_empty and not values:
        raise InputError(f"{name}={values!r} must not be empty")
    for value in values:
        _check_int(value, name, minimum)


class _JsonConfig:
    """Shared `to_dict` / `from_dict` (lists become tuples again) and validation on construction."""

    # Fields that earlier versions saved under another name: former name -> current name. `from_dict`
    # reads either (configs saved beside old models and checkpoints keep loading).
    FORMER_NAMES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, list):
                setattr(self, item.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first invalid field."""

    def to_dict(self) -> dict[str, Any]:
        return {
            item.name: list(value) if isinstance(value := getattr(self, item.name), tuple) else value
            for item in dataclasses.fields(self)
        }

    @classmethod
    def upgrade(cls, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with the fields saved under a former name renamed (order and values kept)."""
        for former, current in cls.FORMER_NAMES.items():
            if former in document and current in document:
                raise InputError(f"{cls.__name__} got both {former!r} (the former name) and {current!r}: give one")
        return {cls.FORMER_NAMES.get(key, key): value for key, value in document.items()}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Any:
        if not isinstance(document, dict):
            raise InputError(f"{cls.__name__} expects a JSON object; got {type(document).__name__}")
        document = cls.upgrade(document)
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise InputError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**document)


@dataclass
class NeighborhoodConfig(_JsonConfig):
    """How the similarity structure S is built (Algorithm 1) from the training features."""

    # K1 = K2 = 50 (about 1,000 positives per image) beat the paper's 20/30 by 4 points of mAP in
    # DESIGN.md's measurement; on our validation split (32 bits, l_N only, 4 seeds) they tie:
    # 0.402 against 0.405 (30/30: 0.410, 20/20: 0.388, 10/30: 0.379, 50/100: 0.397).
    k1: int = 50
    k2: int = 50
    # Square root, L2-normalise and centre the features before the cosine K-NN and as the head's
    # input: validation mAP 0.405 against 0.395 ("none") and 0.377 ("l2") (32 bits, l_N only).
    feature_transform: str = "sqrt_l2_center"
    supervised: bool = False  # build S from labels (BGAN_s of Table 5) instead of Algorithm 1
    # The cosine K-NN: "auto" is exact up to 60,000 training images and faiss IVF (approximate, for
    # millions) above; nprobe = inverted lists searched per image by IVF (recall in BENCHMARKS.md).
    knn_method: str = "auto"
    nprobe: int = 16

    def validate(self) -> None:
        from bganhash.neighborhood.knn import KNN_METHODS  # numba, through the neighborhood package

        _check_int(self.k1, "k1", 1)
        _check_int(self.k2, "k2", 1)
        _check_choice(self.feature_transform, "feature_transform", TRANSFORMS)
        _check_choice(self.knn_method, "knn_method", KNN_METHODS)
        _check_int(self.nprobe, "nprobe", 1)
        if not isinstance(self.supervised, bool):
            raise InputError(f"supervised={self.supervised!r} must be true or false")


@dataclass
class NetworkConfig(_JsonConfig):
    """Encoder, generator and discriminator shapes (Section 3.2 and Table 1)."""

    # "head": FC layers + hash layer on cached frozen backbone features (CPU default);
    # "vgg": the paper's Table 1 network from pixels; "finetune": the backbone trained end to end.
    encoder: str = "head"
    # FC6/FC7 widths (the paper's: 4096, 4096). Validation, l_N only: (1024,) 0.405, () 0.389,
    # (1024, 1024) 0.381, (2048,) 0.405 with app.
    head_hidden: tuple[int, ...] = (1024,)
    backbone: str = "efficientnet_lite0"  # for encoder="finetune"
    generator_widths: tuple[int, ...] = (256, 128, 32)  # Section 3.2.3, before width_factor
    generator_fc_channels: int = 256  # the 8x8x256 fully connected layer
    discriminator_widths: tuple[int, ...] = (32, 128, 256, 512)
    discriminator_dense: int = 1024
    # Scales every generator / discriminator width (and the VGG encoder's); 1 = the paper's widths.
    # 1/16 keeps a CIFAR-10 epoch of 10,000 images at 5-9 s on the shared 2-core machine.
    width_factor: float = 0.0625
    # Side of the reconstructed images, the generator's output and the discriminator's input (8 * 2**k;
    # not the backbone's input side, FeatureConfig.image_size); 0 = the largest such side that is at
    # most both the training images' side and max_reconstruction_size.
    reconstruction_size: int = 0
    # 16 on CPU: a 16x16 reconstruction of CIFAR-10 trains about 1.7x faster than 32x32 (9.4
    # against 16.3 s per epoch) and scored no lower on the validation split (0.391 against 0.377,
    # 32 bits, tanh, lambda_1 = 0.1); the paper preset allows the authors' 64.
    max_reconstruction_size: int = 16
    # Batch-normalise z (each bit over the batch; running statistics when encoding). The paper's hash layer
    # has none; a VGG trained from pixels needs it: at initialisation its z varies little between images
    # (most bits one sign for all, |z| about 0.04), where l_N's gradient, proportional to the other codes,
    # is about 0, and a CPU run left l_N at 0.500 for 100 epochs (RESULTS.md, issue 14).
    hash_batchnorm: bool = False
    # "itq": the head encoder also passes its input features through to the hash layer, whose weights start
    # as ITQ's projection of them (the hidden layer's weights at 0), so training starts from ITQ's codes
    # (encoder="head" only). "random": PyTorch's default initialisation, the paper's.
    hash_init: str = "random"

    FORMER_NAMES: ClassVar[dict[str, str]] = {"image_size": "reconstruction_size",
                                              "max_image_size": "max_reconstruction_size"}

    def validate(self) -> None:
        _check_choice(self.encoder, "encoder", ENCODERS)
        _check_choice(self.hash_init, "hash_init", HASH_INITS)
        if self.hash_init == "itq" and self.encoder != "head":
            raise InputError(f"hash_init='itq' initialises the hash layer on features: it needs encoder='head', "
                             f"not {self.encoder!r}")
        _check_int_tuple(self.head_hidden, "head_hidden", 1, allow_empty=True)
        _check_int_tuple(self.generator_widths, "generator_widths", 1, allow_empty=False)
        _check_int(self.generator_fc_channels, "generator_fc_channels", 1)
        _check_int_tuple(self.discriminator_widths, "discriminator_widths", 1, allow_empty=False)
        _check_int(self.discriminator_dense, "discriminator_dense", 1)
        _check_number(self.width_factor, "width_factor", 0.0, inclusive=False)
        _check_int(self.reconstruction_size, "reconstruction_size", 0)
        if self.reconstruction_size:
            check_reconstruction_size(self.reconstruction_size)
        _check_int(self.max_reconstruction_size, "max_reconstruction_size", 8)
        if not isinstance(self.backbone, str) or not self.backbone:
            raise InputError(f"backbone={self.backbone!r} must be a backbone name")
        if not isinstance(self.hash_batchnorm, bool):
            raise InputError(f"hash_batchnorm={self.hash_batchnorm!r} must be true or false")


def check_reconstruction_size(size: int) -> int:
    """Reconstructions start from 8x8 and double: the side must be 8, 16, 32, 64, ..."""
    if size < 8 or size % 8 or (size // 8) & (size // 8 - 1):
        raise InputError(f"reconstruction_size={size} must be 8 * 2**k (8, 16, 32, 64, ...)")
    return size


@dataclass
class LossConfig(_JsonConfig):
    """Which loss terms are on, their weights, and the sign relaxation (Eq. 5-14, Tables 2 and 4)."""

    use_neighborhood: bool = True
    use_content: bool = True
    use_adversarial: bool = True
    # lambda_1 of Eq. 9 (paper: 0.1). On frozen features the content gradient mostly disturbs the
    # codes: validation mAP (32 bits, app) 0.398 at 0.1, 0.415 at 0.01 (2 seeds), l_N alone 0.415;
    # pixel MSE only (perceptual_weight=0) at 0.1: 0.409 (2 seeds).
    lambda_content: float = 0.01
    lambda_adversarial: float = 0.1  # lambda_2 of Eq. 9
    perceptual_weight: float = 1.0  # weight of the perceptual MSE inside the content loss (Eq. 13: 1)
    # Divide the perceptual MSE by the mean square of the real images' discriminator features, so ℓC keeps
    # its scale while the discriminator's (unnormalised ELU) features grow. The paper has no such division;
    # without it the paper preset on 2,000 CIFAR-10 images (1/16 widths, SGD 0.01) saw ℓC grow 0.47 -> 564
    # in 45 epochs, then every loss NaN and one code for every image (RESULTS.md, issue 14).
    relative_perceptual: bool = False
    # "app" (Eq. 5), "tanh" (Eq. 7) or "two_step". The paper's Table 4 puts tanh a little ahead; on
    # our validation split app gave 0.415 against tanh's 0.402 (32 bits, l_N only, mean of 3-4 seeds).
    activation: str = "app"
    # mean((z - sgn z)^2), as in the authors' code: with it mAP held at 0.451 for every beta instead
    # of falling from 0.435 (beta=1) to 0.407 (beta=10) (DESIGN.md). The paper has no such term.
    # On the validation split, l_N only with tanh: 0.405 with it, 0.412 without (one seed, a tie).
    quantization_weight: float = 0.1
    # Reweight so positive and negative pairs of S count equally in the neighbourhood loss: 0.383
    # against 0.405 on the validation split (32 bits, l_N only), as in DESIGN.md, so off.
    balance_pairs: bool = False
    # Blend the +1 / -1 targets of l_N with the cosine similarity of the (transformed) input features:
    # target = (1 - w) * s_ij + w * cos_ij. 0 is the paper's l_N. Above 0, positives are no longer all
    # pulled onto one code: nearer neighbours get nearer codes, so the top of a Hamming ranking is ordered
    # (collections use it: bganhash.collection.build.collection_bgan_settings). Head encoder only.
    cosine_target_weight: float = 0.0
    # l_N's target for a positive pair (the paper: 1, identical codes). Below 1 a pseudo-class may spread
    # over nearby codes instead of sharing one vertex. A 10,000-image collection (l_N only, 64 bits):
    # precision@10 0.506 at 1, 0.528 at 0.5, 0.572 at 0; the bit-spread term did better (RESULTS.md).
    positive_target: float = 1.0
    # l_N's target for a pair that S does not link (the paper: -1, opposite codes). Opposite codes exist for
    # two groups only; 0 (orthogonal codes, Hamming distance L/2) is a target many groups can meet at once.
    negative_target: float = -1.0
    # Weight of bganhash.bgan.losses.bit_spread_loss (balanced, uncorrelated bits) beside l_N; 0 is the
    # paper's objective. Collections use K / 50 (collection_bgan_settings): at 10,000 images precision@10
    # 0.574 against 0.517 (32 bits), mAP@all 0.401 against 0.452.
    bit_spread_weight: float = 0.0
    # Whether the encoder and W_h also descend lambda_2 * (the generator's adversarial loss), i.e. l_A
    # reaches the encoder through the generator, as in the authors' code (their single loss trains both).
    # False is Eq. 18's reading: the encoder descends l_N + lambda_1 l_C only, so l_A shapes the codes
    # through nothing and Table 2's N+A row equals N. Table 2 reports both readings.
    adversarial_reaches_encoder: bool = False

    def validate(self) -> None:
        _check_number(self.cosine_target_weight, "cosine_target_weight", 0.0)
        _check_number(self.bit_spread_weight, "bit_spread_weight", 0.0)
        for name in ("positive_target", "negative_target"):
            _check_number(getattr(self, name), name, -1.0)
            if getattr(self, name) > 1:
                raise InputError(f"{name}={getattr(self, name)!r} must be between -1 and 1")
        if self.negative_target >= self.positive_target:
            raise InputError(f"negative_target={self.negative_target!r} must be below "
                             f"positive_target={self.positive_target!r}")
        if self.cosine_target_weight > 1:
            raise InputError(f"cosine_target_weight={self.cosine_target_weight!r} must be between 0 and 1")
        for name in ("use_neighborhood", "use_content", "use_adversarial", "balance_pairs",
                     "adversarial_reaches_encoder", "relative_perceptual"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("lambda_content", "lambda_adversarial", "perceptual_weight", "quantization_weight"):
            _check_number(getattr(self, name), name, 0.0)
        _check_choice(self.activation, "activation", ACTIVATIONS)
        if not (self.use_neighborhood or self.use_content or self.use_adversarial):
            raise InputError("at least one of use_neighborhood, use_content, use_adversarial must be true")

    @property
    def needs_images(self) -> bool:
        """The content and adversarial losses reconstruct images; the neighbourhood loss alone does not."""
        return self.use_content or self.use_adversarial


@dataclass
class TrainConfig(_JsonConfig):
    """Optimisation: optimiser, batches, the beta continuation schedule, seed and device."""

    optimizer: str = "adam"  # the authors' code: Adam 1e-3; the paper: SGD 0.01
    # Validation (32 bits, app): l_N only 0.415 at 1e-3, 0.420 at 3e-3, 0.399 at 1e-2; the whole
    # BGAN 0.415 at 1e-3 and 0.416 at 3e-3, where the discriminator's features grow 5x: 1e-3 kept.
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # 1e-4: 0.374 against 0.415 (validation, l_N only, app)
    batch_size: int = 128  # 256: 0.407, 512 with lr 3e-3: 0.418, against 0.405 (l_N only, tanh)
    # More epochs help a little (l_N only, app: 5 -> 0.415, 10 -> 0.421, 20 -> 0.426) but the
    # whole BGAN must train on CIFAR-10 in a few minutes on 2 CPU cores.
    epochs_per_stage: int = 5
    beta_schedule: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)  # one stage per beta (Section 3.4)
    seed: int = 0
    device: str = "cpu"
    # CPU threads while training (0 = leave torch's setting). The cpu preset's networks are tiny:
    # on the shared 2-core machine digits trained in 10 s on 1 thread against 109 s on 2.
    num_threads: int = 1

    def validate(self) -> None:
        _check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        _check_number(self.lr, "lr", 0.0, inclusive=False)
        _check_number(self.momentum, "momentum", 0.0)
        _check_number(self.weight_decay, "weight_decay", 0.0)
        _check_int(self.batch_size, "batch_size", 2)
        _check_int(self.epochs_per_stage, "epochs_per_stage", 1)
        _check_sequence(self.beta_schedule, "beta_schedule")
        if not self.beta_schedule:
            raise InputError("beta_schedule must hold at least one beta")
        for beta in self.beta_schedule:
            _check_number(beta, "beta_schedule", 0.0, inclusive=False)
        _check_int(self.seed, "seed", 0)
        _check_int(self.num_threads, "num_threads", 0)
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"device={self.device!r} must be a torch device name such as 'cpu' or 'cuda'")


SECTIONS = {
    "neighborhood": NeighborhoodConfig,
    "network": NetworkConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}
# Flat former field names (`--set image_size=32`, `BGANHasher(image_size=32)`) -> current names.
FORMER_FIELD_NAMES = {former: current for section in SECTIONS.values()
                      for former, current in section.FORMER_NAMES.items()}


@dataclass
class BGANConfig(_JsonConfig):
    """Everything that defines a BGAN training run; stored as config.json beside the weights."""

    n_bits: int = 32
    neighborhood: NeighborhoodConfig = field(default_factory=NeighborhoodConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "cpu"

    def validate(self) -> None:
        _check_int(self.n_bits, "n_bits", 1)
        _check_choice(self.preset, "preset", PRESETS)
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise InputError(f"{name} must be a {section.__name__}; got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"n_bits": self.n_bits, "preset": self.preset}
        document.update({name: getattr(self, name).to_dict() for name in SECTIONS})
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> BGANConfig:
        if not isinstance(document, dict):
            raise InputError(f"BGANConfig expects a JSON object; got {type(document).__name__}")
        known = {"n_bits", "preset", *SECTIONS}
        unknown = sorted(set(document) - known)
        if unknown:
            raise InputError(f"unknown BGANConfig keys {unknown}; known keys: {sorted(known)}")
        sections = {name: SECTIONS[name].from_dict(document[name]) for name in SECTIONS if name in document}
        plain = {name: document[name] for name in ("n_bits", "preset") if name in document}
        return cls(**plain, **sections)


PAPER_OVERRIDES: dict[str, dict[str, Any]] = {
    "neighborhood": {"k1": 20, "k2": 30, "feature_transform": "none"},
    "network": {"encoder": "vgg", "head_hidden": (4096, 4096), "width_factor": 1.0,
                "max_reconstruction_size": 64},
    "loss": {"quantization_weight": 0.0, "lambda_content": 0.1, "activation": "tanh"},
    "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 256, "epochs_per_stage": 15, "device": "cuda",
              "num_threads": 0},
}


def resolve_preset(preset: str) -> str:
    """'auto' means 'paper' where CUDA is available, else 'cpu'."""
    if preset == "auto":
        import torch

        return "paper" if torch.cuda.is_available() else "cpu"
    _check_choice(preset, "preset", ("auto", *PRESETS))
    return preset


def make_config(preset: str = "auto", n_bits: int = 32, **overrides: Any) -> BGANConfig:
    """The preset's configuration with fields overridden by name (`lr=0.01`, `k1=20`, `loss=LossConfig()`).

    Field names are unique across sections, so a flat name is enough; a whole section may be passed
    as a dataclass or dict under its section name.
    """
    preset = resolve_preset(preset)
    sections: dict[str, Any] = {name: SECTIONS[name]().to_dict() for name in SECTIONS}
    if preset == "paper":
        for name, values in PAPER_OVERRIDES.items():
            sections[name].update(values)
    return override_config(BGANConfig.from_dict({"n_bits": n_bits, "preset": preset, **sections}), **overrides)


def override_config(config: BGANConfig, **overrides: Any) -> BGANConfig:
    """A copy of `config` with fields replaced by flat name, or whole sections by section name."""
    document = config.to_dict()
    owner = {key: name for name in SECTIONS for key in document[name]}
    for former, current in FORMER_FIELD_NAMES.items():
        if former in overrides and current in overrides:
            raise InputError(f"got both {former!r} (the former name) and {current!r}: give one")
    for key, value in overrides.items():
        key = FORMER_FIELD_NAMES.get(key, key)
        if key in SECTIONS:
            section = SECTIONS[key]
            if not isinstance(value, (section, dict)):
                raise InputError(f"{key}={value!r} must be a {section.__name__} or a JSON object of its fields")
            document[key].update(value.to_dict() if isinstance(value, section) else section.upgrade(dict(value)))
        elif key in owner:
            document[owner[key]][key] = value
        elif key in ("n_bits", "preset"):
            document[key] = value
        else:
            raise InputError(f"unknown BGAN setting {key!r}; known settings: {sorted([*owner, *SECTIONS])}")
    return BGANConfig.from_dict(document)


# Settings that commands take as options of their own, not as --set FIELD=VALUE.
OPTION_SETTINGS = {"n_bits": "--bits", "preset": "--preset", "seed": "--seed"}


def check_overrides(overrides: dict[str, Any], preset: str = "cpu") -> dict[str, Any]:
    """`overrides` (from `--set FIELD=VALUE`) if every one names a field and gives it a valid value,
    else InputError naming the first that does not; returns them unchanged."""
    for key, option in OPTION_SETTINGS.items():
        if key in overrides:
            raise InputError(f"--set {key}=...: give {key} with {option}, not --set")
    make_config(preset if preset in PRESETS else "cpu", 32, **overrides)
    return overrides


def upgrade_config_document(document: Any) -> Any:
    """A saved BGANConfig document with every field under its current name; nothing else changes (no
    defaults are filled in), so that an old document compares with a new one key by key."""
    if not isinstance(document, dict):
        return document
    return {key: SECTIONS[key].upgrade(value) if key in SECTIONS and isinstance(value, dict) else value
            for key, value in document.items()}
