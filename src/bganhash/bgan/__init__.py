"""BGAN (Song et al., 2017): configuration, networks, losses, the training loop, its checkpoints and
data-parallel training, and the estimator.

`bganhash.bgan.BGANHasher` is imported on first access, so that importing this package loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bganhash.bgan.estimator import BGANHasher

__all__ = ["BGANHasher"]


def __getattr__(name: str) -> Any:
    if name == "BGANHasher":
        from bganhash.bgan.estimator import BGANHasher

        return BGANHasher
    raise AttributeError(f"module 'bganhash.bgan' has no attribute {name!r}")
