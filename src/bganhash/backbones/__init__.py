"""Pretrained image backbones, created by name from a small registry (timm-style `create_backbone`)."""

from __future__ import annotations

import abc
from typing import Callable

import torch
from torch import nn

from bganhash._validation import InputError

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone"]


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


BackboneFactory = Callable[[bool], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str, factory: BackboneFactory) -> None:
    """Make `create_backbone(name, pretrained)` call `factory(pretrained)` (e.g. for a ResNet of your own)."""
    _REGISTRY[name] = factory


def list_backbones() -> list[str]:
    """Names `create_backbone` accepts."""
    return sorted(_REGISTRY)


def create_backbone(name: str = "efficientnet_lite0", pretrained: bool = True) -> Backbone:
    """Build a registered backbone in eval mode, with its pretrained weights unless `pretrained=False`."""
    if name not in _REGISTRY:
        raise InputError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    return _REGISTRY[name](pretrained).eval()


def _efficientnet_lite_factory(name: str) -> BackboneFactory:
    def build(pretrained: bool) -> Backbone:
        from bganhash.backbones.efficientnet_lite import efficientnet_lite  # imported lazily: needs Backbone

        return efficientnet_lite(name, pretrained=pretrained)

    return build


for _name in ("efficientnet_lite0", "efficientnet_lite2"):
    register_backbone(_name, _efficientnet_lite_factory(_name))
