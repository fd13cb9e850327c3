"""Atomic file writes: a reader never sees a half-written file, and a failed write loses nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from bganhash._validation import InputError

CHECKSUM_KEY = "sha256"  # in a verified JSON document: the sha256 of its own canonical content
_HASH_CHUNK = 1 << 20


class UnverifiedFileWarning(UserWarning):
    """A saved file written before checksums existed was loaded without verification."""


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
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= max_version:
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


# ---- checksums ---------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """What a manifest records of a file: its size and sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def verify_file(path: Path, expected: Any, listed_in: Path) -> None:
    """Check `path` against the {"bytes", "sha256"} entry `listed_in` records for it; InputError otherwise."""
    if not isinstance(expected, dict):
        raise InputError(f"{listed_in} is corrupted: its entry for {path.name} is not a checksum")
    if not path.is_file():
        raise InputError(f"{path} is missing: {listed_in} lists it")
    if path.stat().st_size != expected.get("bytes") or file_sha256(path) != expected.get("sha256"):
        raise InputError(f"{path} is corrupted or was changed: its checksum does not match {listed_in}")


def json_sha256(document: dict[str, Any]) -> str:
    """The sha256 of a JSON document's canonical form (sorted keys, no spaces), its own checksum key left out."""
    body = {key: value for key, value in document.items() if key != CHECKSUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def write_verified_json(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """Write `document` atomically with the checksum of its own content under CHECKSUM_KEY."""
    plain = json.loads(json.dumps(document, default=_json_default))  # what a reader will parse
    plain.pop(CHECKSUM_KEY, None)
    write_json(path, {**plain, CHECKSUM_KEY: json_sha256(plain)})


def check_json_checksum(document: dict[str, Any], path: Path, required: bool) -> bool:
    """Verify a document's own checksum. One that has none passes only when not `required` (a file written
    before checksums existed) and then with an UnverifiedFileWarning; returns whether it was verified."""
    if CHECKSUM_KEY not in document:
        if required:
            raise InputError(f"{path} is corrupted: its format version records a checksum, but it has none")
        warnings.warn(f"{path} was written by an earlier bganhash without checksums: loaded unverified "
                      "(save it again to add them)", UnverifiedFileWarning, stacklevel=2)
        return False
    if document[CHECKSUM_KEY] != json_sha256(document):
        raise InputError(f"{path} is corrupted or was edited: its content does not match its checksum")
    return True


def read_verified_json(path: Path, format_name: str, max_version: int, what: str,
                       verified_since: int, covered: bool = False) -> dict[str, Any]:
    """`read_versioned_json`, then the document's own checksum: required from format version
    `verified_since` on, checked whenever present (so a version number lowered to an older one's is caught).
    `covered`: another verified file checksums this one, so an old one without its own checksum is no warning."""
    document = read_versioned_json(path, format_name, max_version, what)
    if covered and CHECKSUM_KEY not in document:
        return document
    check_json_checksum(document, path, required=document["format_version"] >= verified_since)
    return document
