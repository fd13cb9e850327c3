"""bganhash: unsupervised binary hashing for image retrieval (BGAN), Hamming indexes and retrieval metrics.

Importing the package loads no torch: `BGANHasher` and `Index` are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bganhash._validation import InputError, NotFittedError
from bganhash._version import __version__

if TYPE_CHECKING:
    from bganhash.bgan.estimator import BGANHasher
    from bganhash.index import Index

__all__ = ["BGANHasher", "Index", "InputError", "NotFittedError", "__version__"]


def __getattr__(name: str) -> Any:
    """The heavy public names, imported when first asked for (BGANHasher needs torch)."""
    if name == "BGANHasher":
        from bganhash.bgan.estimator import BGANHasher

        return BGANHasher
    if name == "Index":
        from bganhash.index import Index

        return Index
    raise AttributeError(f"module 'bganhash' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
