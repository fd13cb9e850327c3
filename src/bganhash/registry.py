"""Every hasher by name, BGAN included: the one list that CLI choices, collections and reports read.

Each hasher class carries its `name` and `display_name`; the baselines are imported here, BGAN (which
needs torch) only when its class is first asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bganhash._validation import InputError
from bganhash.hashers import ITQ, LSH, PCAH, SH, Hasher, SphericalHashing
from bganhash.hashers.base import saved_class_is_loaded

BASELINE_CLASSES: dict[str, type[Hasher]] = {cls.name: cls for cls in (LSH, PCAH, ITQ, SH, SphericalHashing)}
BASELINES: tuple[str, ...] = tuple(BASELINE_CLASSES)
HASHERS: tuple[str, ...] = ("bgan", *BASELINES)  # "bgan": bganhash.bgan.estimator.BGANHasher.name


def hasher_class(name: str) -> type[Hasher]:
    """The class registered as `name`; InputError listing the choices for an unknown one."""
    if name == "bgan":
        from bganhash.bgan.estimator import BGANHasher  # torch

        return BGANHasher
    if name not in BASELINE_CLASSES:
        raise InputError(f"unknown hasher {name!r}; choose one of: {', '.join(HASHERS)}")
    return BASELINE_CLASSES[name]


def display_name(name: str) -> str:
    """How tables and plots call the hasher registered as `name` ("ITQ", "SpH", "BGAN")."""
    return hasher_class(name).display_name


def hasher_name(hasher: Any) -> str:
    """The registry name of a hasher instance; InputError for an object that is not a registered hasher."""
    name = getattr(type(hasher), "name", None)
    if name not in HASHERS or hasher_class(name) is not type(hasher):
        raise InputError(f"{type(hasher).__name__} is not a hasher bganhash can store in an index")
    return name


def create_hasher(name: str, n_bits: int, random_state: int | None = None, **params: Any) -> Hasher:
    """Build the hasher registered as `name` with its hyper-parameters."""
    cls = hasher_class(name)
    try:
        return cls(n_bits, random_state=random_state, **params)
    except TypeError as exc:
        accepted = ", ".join(cls(n_bits).get_params())
        raise InputError(f"{name} does not take {sorted(params)}; its parameters are: {accepted}") from exc


def load_hasher(path: str | os.PathLike, expected: str | None = None) -> Hasher:
    """A saved hasher of any kind (a baseline or BGAN) from the directory its `save` wrote; no pickles.
    With `expected`, InputError unless it is the hasher registered under that name."""
    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"no saved model at {directory}: give the model folder that `bganhash train` prints "
                         "(e.g. runs/bgan-cifar10/32bit/model), or one written in Python by hasher.save(PATH)")
    if not saved_class_is_loaded(directory):
        hasher_class("bgan")  # BGANHasher (torch) registers itself with the loader when imported
    hasher = Hasher.load(directory)
    if expected is not None and hasher_name(hasher) != expected:
        raise InputError(f"{directory} holds a {type(hasher).__name__}, but {expected!r} was expected")
    return hasher
