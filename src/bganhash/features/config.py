"""How features are extracted (backbone, input size, batch, resize): a dataclass serialised to JSON."""

from __future__ import annotations

from dataclasses import dataclass

from bganhash._validation import InputError, check_positive_int
from bganhash.features.backbones import list_backbones

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")


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
