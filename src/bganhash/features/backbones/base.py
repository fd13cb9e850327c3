"""The interface every image backbone implements: pooled features and ImageNet logits (a torch module)."""

from __future__ import annotations

import abc

import torch
from torch import nn


class Backbone(nn.Module, abc.ABC):
    """An image network: normalised (n, 3, s, s) images -> pooled features, and ImageNet logits.

    Inputs are RGB in [0, 1], resized to `default_image_size` (or another size), then normalised
    channel-wise with `input_mean` and `input_std`.
    """

    num_features: int
    default_image_size: int
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, (n, num_features)."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (n, 1000) for ImageNet backbones."""
