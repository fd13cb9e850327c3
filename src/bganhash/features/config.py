"""How features are extracted (backbone, input size, batch, resize): a dataclass serialised to JSON."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from typing import Any

from bganhash._system import cpu_has_native_bf16
from bganhash._validation import InputError, check_positive_int
from bganhash.features.backbones import list_backbones

RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")
MAX_UPSCALING = 12  # image_size_for_side: digits (8 px) scored best at 96 px = 12x (RESULTS.md)
SMALLEST_DEFAULT_SIZE = 64
RUNTIMES = ("auto", "onnxruntime", "openvino", "torch")  # see features.runtime
PRECISIONS = ("fp32", "bf16", "int8")  # what an engine computes in
PRECISION_CHOICES = ("auto", *PRECISIONS)  # "auto": bf16 where the CPU computes it natively, else fp32
RUNTIME_VARIABLE = "BGANHASH_RUNTIME"  # what "auto" stands for, when set (e.g. torch, to rule a runtime out)


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
    faster but not identical; "auto" (the default) becomes bf16 on a CPU with native bf16 (AVX-512 BF16 or
    AMX) when OpenVINO runs the backbone, else fp32, and is resolved when the config is made, so that a
    saved model or index records the precision its features had. bf16 ran 1.75x the images/s of fp32 on
    2 cores and moved CIFAR-10 mAP@all at 32 bits by +0.003 +- 0.006 over 3 seeds (BENCHMARKS.md).
    """

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    batch_size: int = 64
    resize: str = "bilinear"
    runtime: str = "auto"
    precision: str = "auto"
    flip: bool = False  # average each image's features with its mirror image's (2x the inference)

    def __post_init__(self) -> None:
        if self.precision == "auto":
            self.precision = resolve_precision(self.precision, self.runtime)

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
        if not isinstance(self.flip, bool):
            raise InputError(f"flip={self.flip!r} must be true or false")
        return self


def image_size_for_side(side: int, largest: int = 224) -> int:
    """The default input size for images whose shorter side is `side` px: at most MAX_UPSCALING times that
    side, in steps of 32, between SMALLEST_DEFAULT_SIZE and the backbone's own 224. Digits (8 px) get 96, at
    which they measured best (mAP@all 0.60 against 0.46 at 224, RESULTS.md); CIFAR-10 (32 px) and photos
    get 224, which measured best for CIFAR-10."""
    size = max(SMALLEST_DEFAULT_SIZE, (MAX_UPSCALING * int(side)) // 32 * 32)
    return min(size, largest)


def runtime_available(runtime: str) -> bool:
    """Whether `runtime` can be imported here (torch always counts: it is a dependency)."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}[runtime]
    return importlib.util.find_spec(module) is not None


def resolve_runtime(runtime: str, precision: str) -> str:
    """The runtime `auto` stands for: $BGANHASH_RUNTIME when set, else OpenVINO (ONNX Runtime where it is
    not installed, for fp32), else torch."""
    if runtime == "auto" and os.environ.get(RUNTIME_VARIABLE, "").strip():
        runtime = os.environ[RUNTIME_VARIABLE].strip()
        if runtime not in RUNTIMES:
            raise InputError(f"${RUNTIME_VARIABLE}={runtime!r} must be one of {', '.join(RUNTIMES)}")
    if runtime not in RUNTIMES:
        raise InputError(f"runtime={runtime!r} must be one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    if runtime == "auto":
        preferred = ("openvino",) if precision != "fp32" else ("openvino", "onnxruntime")  # by measurement
        runtime = next((name for name in preferred if runtime_available(name)), "torch")
    if precision != "fp32" and runtime != "openvino":
        # ONNX Runtime runs the int8 model too, but at 36 images/s against OpenVINO's 118 (BENCHMARKS.md)
        raise InputError(f"precision={precision} runs on OpenVINO (pip install openvino), not on {runtime}")
    if not runtime_available(runtime):
        raise InputError(f"runtime={runtime!r} is not installed: pip install {runtime}")
    return runtime


def resolve_precision(precision: str, runtime: str = "auto") -> str:
    """The precision "auto" stands for: bf16 where this CPU computes it natively and `runtime` resolves to
    OpenVINO (which runs bf16), else fp32. Other precisions are returned as they are."""
    if precision != "auto":
        return precision
    if not cpu_has_native_bf16():
        return "fp32"
    try:
        return "bf16" if resolve_runtime(runtime, "bf16") == "openvino" else "fp32"
    except InputError:  # OpenVINO absent, or a runtime that does not run bf16 was asked for
        return "fp32"
