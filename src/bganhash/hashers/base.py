"""The hasher interface every method shares: `fit(X)`, `encode(X) -> {-1,+1}`, save/load without pickles."""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors.numpy

from bganhash._io import (
    atomic_write,
    file_entry,
    read_safetensors,
    read_verified_json,
    verify_file,
    write_verified_json,
)
from bganhash._validation import InputError, check_features, check_fitted, check_positive_int

FORMAT_NAME = "bganhash-hasher"
FORMAT_VERSION = 2  # 2: hasher.json checksums itself and every other file of the directory (version 1: none)
VERIFIED_SINCE = 2
METADATA_FILE = "hasher.json"
ARRAYS_FILE = "hasher.safetensors"
_ENCODE_CHUNK_ROWS = 16384

_REGISTERED_CLASSES: dict[str, type[Hasher]] = {}


class Hasher(ABC):
    """Base class of every hasher: stores hyper-parameters, validates input, signs projections.

    Subclasses implement `_fit(X)` (set learned attributes ending in `_`) and `_project(X)` (real
    values whose sign is the code). Learned numpy arrays are saved to safetensors, other learned
    values (ints, floats, lists) to JSON; subclasses holding other state override `_get_state` and
    `_set_state`.
    """

    name: ClassVar[str] = ""  # the registry name (bganhash.registry), e.g. "itq"
    display_name: ClassVar[str] = "Hasher"

    def __init__(self, n_bits: int, random_state: int | None = None) -> None:
        self.n_bits = n_bits
        self.random_state = random_state

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls):
            _REGISTERED_CLASSES[cls.__name__] = cls

    # ---- estimator API ---------------------------------------------------------------------------

    def fit(self, X: Any) -> Hasher:
        """Learn the hash functions from training features `X` (n_samples, n_features); returns self."""
        X = check_features(X, "X")
        check_positive_int(self.n_bits, "n_bits")
        _check_random_state(self.random_state)
        self._check_params(X)
        self._fit(X)
        self.n_features_in_ = int(X.shape[1])
        return self

    def encode(self, X: Any) -> np.ndarray:
        """Binary codes of `X` as an int8 (n_samples, n_bits) array of -1/+1 (sgn(0) = +1)."""
        check_fitted(self, "n_features_in_")
        X = check_features(X, "X", n_features=self.n_features_in_)
        codes = np.empty((X.shape[0], self.n_bits), dtype=np.int8)
        for start in range(0, X.shape[0], _ENCODE_CHUNK_ROWS):
            stop = start + _ENCODE_CHUNK_ROWS
            codes[start:stop] = np.where(self._project(X[start:stop]) >= 0, 1, -1)
        return codes

    def fit_encode(self, X: Any) -> np.ndarray:
        """Fit on `X`, then return the codes of `X`."""
        return self.fit(X).encode(X)

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes of the same names (as scikit-learn)."""
        signature = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name, parameter in signature.parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        }

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items())
        return f"{type(self).__name__}({arguments})"

    # ---- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, covering: Sequence[str] = ()) -> Path:
        """Write the fitted hasher to directory `path` (hasher.safetensors, then hasher.json, which records the
        checksum of every file of the directory: the arrays and the files named in `covering`, already written
        there, such as a pipeline's pipeline.json); returns the directory."""
        check_fitted(self, "n_features_in_")
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"cannot save a hasher to {directory}: it exists and is not a directory")
        arrays, attributes = self._get_state()
        document = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.get_params(),
            "attributes": attributes,
            "arrays": sorted(arrays),
        }
        contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
        with atomic_write(directory / ARRAYS_FILE, "wb") as handle:
            handle.write(safetensors.numpy.save(contiguous))
        document["files"] = {name: file_entry(directory / name) for name in sorted({ARRAYS_FILE, *covering})}
        write_verified_json(directory / METADATA_FILE, document)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike) -> Hasher:
        """Read a hasher written by `save`; refuses unknown classes, other formats and missing files."""
        directory = Path(path)
        document = _read_metadata(directory / METADATA_FILE)
        verify_listed_files(directory, document)
        hasher_class = _resolve_class(document.get("class"), directory)
        if not issubclass(hasher_class, cls):
            raise InputError(f"{directory} holds a {hasher_class.__name__}, not a {cls.__name__}")
        arrays = _read_arrays(directory / ARRAYS_FILE, document.get("arrays", []))
        try:
            hasher = hasher_class(**document.get("params", {}))
        except (TypeError, InputError) as exc:
            raise InputError(
                f"{directory / METADATA_FILE} has parameters {hasher_class.__name__} rejects: {exc}"
            ) from exc
        hasher._set_state(arrays, document.get("attributes", {}))
        return hasher

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Learned state: numpy arrays (to safetensors) and JSON-able values, from attributes ending `_`."""
        arrays: dict[str, np.ndarray] = {}
        attributes: dict[str, Any] = {}
        for name, value in vars(self).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                arrays[name] = value
            else:
                attributes[name] = value.item() if isinstance(value, np.generic) else value
        return arrays, attributes

    def _set_state(self, arrays: dict[str, np.ndarray], attributes: dict[str, Any]) -> None:
        """Restore what `_get_state` returned."""
        for name, value in {**attributes, **arrays}.items():
            setattr(self, name, value)

    # ---- for subclasses --------------------------------------------------------------------------

    def _check_params(self, X: np.ndarray) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Validate the method's own hyper-parameters against the training data (InputError)."""

    @abstractmethod
    def _fit(self, X: np.ndarray) -> None:
        """Learn the method's attributes from validated float32 features."""

    @abstractmethod
    def _project(self, X: np.ndarray) -> np.ndarray:
        """Real-valued (n, n_bits) projections of validated features; the code is their sign."""


def check_bits_within_pca_rank(n_bits: int, X: np.ndarray, method: str) -> None:
    """PCA-based methods need one principal direction per bit: n_bits <= n_features and <= n_samples."""
    n_samples, n_features = X.shape
    if n_bits > n_features:
        raise InputError(f"{method} needs n_bits <= n_features; got n_bits={n_bits} with {n_features} features")
    if n_bits > n_samples:
        raise InputError(f"{method} needs n_bits <= n_samples; got n_bits={n_bits} with {n_samples} samples")


def check_positive_float(value: Any, name: str) -> float:
    """Return `value` as a float > 0, or raise InputError echoing it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise InputError(f"{name}={value!r} must be a number > 0")
    return float(value)


def _check_random_state(random_state: Any) -> None:
    """Seeds are None or a non-negative int, so that saved parameters stay plain JSON."""
    if random_state is not None:
        check_positive_int(random_state, "random_state", minimum=0)


def saved_class_is_loaded(path: str | os.PathLike) -> bool:
    """Whether the class of the hasher saved in directory `path` has been imported (and so registered)."""
    return _read_metadata(Path(path) / METADATA_FILE).get("class") in _REGISTERED_CLASSES


def _read_metadata(path: Path) -> dict[str, Any]:
    """The JSON half of a saved hasher, checked for our format name, a known version and its own checksum
    (version 1, from before checksums, loads with a warning)."""
    document = read_verified_json(path, FORMAT_NAME, FORMAT_VERSION, "a saved bganhash hasher", VERIFIED_SINCE)
    kinds = {"class": str, "params": dict, "attributes": dict, "arrays": list, "files": dict}
    wrong = [key for key, kind in kinds.items() if key in document and not isinstance(document[key], kind)]
    if wrong or (document["format_version"] >= VERIFIED_SINCE and "files" not in document):
        raise InputError(f"{path} is corrupted: {', '.join(wrong) or 'files'} missing or of the wrong type")
    return document


def verify_listed_files(directory: Path, document: dict[str, Any]) -> None:
    """Check every file hasher.json lists against its checksum (the arrays must be among them)."""
    files = document.get("files")
    if files is None:  # format version 1: nothing to check (the warning was given when reading it)
        return
    if ARRAYS_FILE not in files or not all(isinstance(name, str) and "/" not in name and name != METADATA_FILE
                                           and not name.startswith(".") for name in files):
        raise InputError(f"{directory / METADATA_FILE} is corrupted: it does not list the directory's own files")
    for name, expected in files.items():
        verify_file(directory / name, expected, directory / METADATA_FILE)


def saved_files(path: str | os.PathLike) -> list[str] | None:
    """The files the hasher saved in directory `path` lists as verified (None for a version-1 save)."""
    document = _read_metadata(Path(path) / METADATA_FILE)
    return sorted(document["files"]) if "files" in document else None


def _resolve_class(name: Any, directory: Path) -> type[Hasher]:
    """The Hasher subclass called `name` (every subclass registers itself when its module is imported;
    `bganhash.registry.load_hasher` imports BGAN's when the saved class is not yet known)."""
    if name not in _REGISTERED_CLASSES:
        known = ", ".join(sorted(_REGISTERED_CLASSES))
        raise InputError(f"{directory} holds an unknown hasher class {name!r}; known classes: {known}")
    return _REGISTERED_CLASSES[name]


def _read_arrays(path: Path, expected: list[str]) -> dict[str, np.ndarray]:
    """The safetensors half of a saved hasher, checked to hold every array the JSON lists."""
    if not path.is_file():
        raise InputError(f"no saved hasher arrays at {path.parent}: {path.name} is missing")
    arrays = read_safetensors(path, "a saved bganhash hasher")
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise InputError(f"{path} lacks the arrays {missing} that {METADATA_FILE} lists")
    return arrays
