"""Hashers: every method learns `fit(X)` and maps features to {-1,+1} codes with `encode(X)`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bganhash._validation import InputError
from bganhash.hashers.base import Hasher
from bganhash.hashers.itq import ITQ
from bganhash.hashers.lsh import LSH
from bganhash.hashers.pcah import PCAH
from bganhash.hashers.sh import SH
from bganhash.hashers.spherical import SphericalHashing

HASHERS: dict[str, type[Hasher]] = {"lsh": LSH, "pcah": PCAH, "itq": ITQ, "sh": SH, "sph": SphericalHashing}
BASELINES: tuple[str, ...] = ("lsh", "pcah", "itq", "sh", "sph")


def hasher_classes() -> dict[str, type[Hasher]]:
    """Every hasher by registry name: the baselines and "bgan" (imported here, not at module load,
    because the BGAN module itself builds on `bganhash.hashers.base`)."""
    from bganhash.bgan import BGANHasher

    return {**HASHERS, "bgan": BGANHasher}


def create_hasher(name: str, n_bits: int, random_state: int | None = None, **params: Any) -> Hasher:
    """Build the hasher registered as `name` (see `HASHERS`) with its hyper-parameters."""
    hasher_class = hasher_classes().get(name)
    if hasher_class is None:
        raise InputError(f"unknown hasher {name!r}; choose one of: {', '.join(hasher_classes())}")
    try:
        return hasher_class(n_bits, random_state=random_state, **params)
    except TypeError as exc:
        accepted = ", ".join(hasher_class(n_bits).get_params())
        raise InputError(f"{name} does not take {sorted(params)}; its parameters are: {accepted}") from exc


def load_hasher(path: str | os.PathLike) -> Hasher:
    """A saved hasher of any kind (a baseline or BGAN) from the directory its `save` wrote; no pickles."""
    import bganhash.bgan  # noqa: F401  (importing it registers BGANHasher with the loader)

    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"no saved model at {directory} (a directory written by a hasher's save())")
    return Hasher.load(directory)


__all__ = ["BASELINES", "HASHERS", "ITQ", "LSH", "PCAH", "SH", "Hasher", "SphericalHashing", "create_hasher", "hasher_classes", "load_hasher"]
