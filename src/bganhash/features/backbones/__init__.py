"""Pretrained image backbones, created by name from a small registry (timm-style `create_backbone`).

The registry itself loads no torch: a backbone's module is imported when it is first created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bganhash._validation import InputError

if TYPE_CHECKING:
    from bganhash.features.backbones.base import Backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]


BackboneFactory = Callable[[bool], "Backbone"]
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
        from bganhash.features.backbones.efficientnet_lite import efficientnet_lite  # torch, on first use

        return efficientnet_lite(name, pretrained=pretrained)

    return build


for _name in ("efficientnet_lite0", "efficientnet_lite2"):
    register_backbone(_name, _efficientnet_lite_factory(_name))
