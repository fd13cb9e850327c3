"""How features are extracted (backbone, input size, batch, resize): a dataclass serialised to JSON."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bganhash._validation import InputError, check_positive_int
from bganhash.features.backbones import list_backbones

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
MAX_UPSCALING = 12  # image_size_for_side: digits (8 px) scored best at 96 px = 12x (RESULTS.md)
SMALLEST_DEFAULT_SIZE = 64
RUNTIMES = ("auto", "onnxruntime", "openvino", "torch")  # see features.runtime
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass
class FeatureConfig:
    """How features are extracted.

    image_size=224 by default, EfficientNet-Lite0's own: on the CIFAR-10 validation split (1,000
    queries carved from the paper's training images) BGAN at 32 bits scored mAP 0.447 against 0.415 at
    128 px, and ITQ 0.335 against 0.313 (benchmarks/bench_feature_choice.py, 2 seeds). 128 px extracts
    about 3x faster on a CPU; pass it where time matters more than the last points. For images much
    smaller than that, `FeatureConfig.for_data(dataset)` picks the size from their resolution.

    runtime: where the backbone runs ("auto": OpenVINO, else ONNX Runtime, see features.runtime); it does
    not change the features beyond 1e-5. precision: "bf16" and "int8" (features.quantize) run on OpenVINO,
    faster but not identical.
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    batch_size: int = 64
    resize: str = "bilinear"
    runtime: str = "auto"
    precision: str = "fp32"

    @classmethod
    def for_data(cls, dataset: Any, **fields: Any) -> FeatureConfig:
        """The config for `dataset`: `fields` as given, and unless `image_size` is among them, the input size
        that follows the images' own resolution (`image_size_for_side` of their typical shorter side)."""
        config = cls(**fields)
        if fields.get("image_size") is None:
            config = replace(config, image_size=image_size_for_side(dataset.typical_side()))
        return config

    def validate(self) -> FeatureConfig:
        """Return self, or raise InputError naming the bad field."""
        if self.backbone not in list_backbones():
            raise InputError(f"backbone={self.backbone!r} is unknown; known backbones: {', '.join(list_backbones())}")
        check_positive_int(self.image_size, "image_size", minimum=32)
        check_positive_int(self.batch_size, "batch_size")
        if self.resize not in RESIZE_MODES:
            raise InputError(f"resize={self.resize!r} must be one of {', '.join(RESIZE_MODES)}")
        if self.runtime not in RUNTIMES:
            raise InputError(f"runtime={self.runtime!r} must be one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        return self


def image_size_for_side(side: int, largest: int = 224) -> int:
    """The default input size for images whose shorter side is `side` px: at most MAX_UPSCALING times that
    side, in steps of 32, between SMALLEST_DEFAULT_SIZE and the backbone's own 224. Digits (8 px) get 96, at
    which they measured best (mAP@all 0.60 against 0.46 at 224, RESULTS.md); CIFAR-10 (32 px) and photos
    get 224, which measured best for CIFAR-10."""
    size = max(SMALLEST_DEFAULT_SIZE, (MAX_UPSCALING * int(side)) // 32 * 32)
    return min(size, largest)
