"""Atomic file writes: a reader never sees a half-written file, and a failed write loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from bganhash._validation import InputError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON document; InputError naming the file, and `what` it should be, when it is missing or corrupted."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {what} is incomplete") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as {what} (corrupted: {exc})") from exc


def read_safetensors(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The numpy arrays of a safetensors file (loading runs no code); InputError naming a missing or damaged file."""
    path = Path(path)
    try:
        return safetensors.numpy.load(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {what} is incomplete") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise InputError(f"cannot read {path} as {what} (corrupted: {exc})") from exc


def read_versioned_json(path: Path, format_name: str, max_version: int, what: str) -> dict[str, Any]:
    """Read a JSON document of ours, checking its `format` name and that its `format_version` is one we
    can read; InputError names the file and the problem. `what` says what the file should be."""
    if not path.is_file():
        raise InputError(f"{path.parent} is not {what}: {path.name} is missing")
    document = read_json(path, what)
    if not isinstance(document, dict) or document.get("format") != format_name:
        raise InputError(f"{path} is not {what} (format {format_name!r} expected)")
    version = document.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise InputError(f"{path} has format_version={version!r}; this bganhash reads up to {max_version}")
    return document


def _current_umask() -> int:
    """The process umask (reading it requires setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a completed rename durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cache_root() -> Path:
    """bganhash's cache folder (downloads, features): $BGANHASH_CACHE, else ~/.cache/bganhash."""
    return Path(os.environ.get("BGANHASH_CACHE") or Path.home() / ".cache" / "bganhash").expanduser()


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Write `document` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path`, atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars and arrays and paths, which `json` does not know."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")
