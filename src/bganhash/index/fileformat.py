"""The on-disk format of a saved `Index`: one versioned file, checksummed.

Layout (little-endian): the header (magic, format version, n_bits, ntotal, length of the backend string),
the backend string (UTF-8), the packed codes (ntotal x code_bytes(n_bits) uint8) and the ids (ntotal int64),
always, so that any file can be searched exactly without faiss; from version 2 on, the length of faiss's
serialised structure (uint64) and that structure (the graph or hash tables of the approximate backends,
empty for flat); last, a SHA-256 of everything before it. Versions 1 and 2 are read; truncated, foreign,
unsupported or corrupted files are refused with an InputError saying which.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import atomic_write
from bganhash._validation import InputError
from bganhash.codes import code_bytes

__all__ = ["IndexFile", "read_index_file", "write_index_file"]

_MAGIC = b"BGANIDX\x00"
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# magic, format version, n_bits, ntotal, length of the backend string (its UTF-8 bytes follow). Version 2
# then holds codes, ids, the length of faiss's serialised structure (uint64) and that structure.
_HEADER = struct.Struct("<8sIIQH")
_STRUCTURE_LENGTH = struct.Struct("<Q")
_DIGEST_SIZE = hashlib.sha256().digest_size


@dataclass(frozen=True)
class IndexFile:
    """What a checked index file holds: codes and ids are read-only views of its bytes, and so is the
    structure (empty when the file holds none)."""

    n_bits: int
    backend: str
    codes: np.ndarray
    ids: np.ndarray
    structure: memoryview


def write_index_file(path: str | os.PathLike, n_bits: int, backend: str, codes: np.ndarray, ids: np.ndarray,
                     structure_size: int, write_structure: Callable[[Callable[[Any], int]], None]) -> None:
    """Write one index file atomically; `write_structure(write)` streams faiss's structure, which must come to
    `structure_size` bytes, through `write(chunk)`."""
    name = backend.encode("utf-8")
    digest = hashlib.sha256()
    written = 0
    with atomic_write(path, "wb") as handle:

        def write(chunk: Any) -> int:
            nonlocal written
            digest.update(chunk)
            written += len(chunk)
            return handle.write(chunk)

        for part in (_HEADER.pack(_MAGIC, _FORMAT_VERSION, n_bits, ids.size, len(name)), name,
                     memoryview(codes).cast("B"), memoryview(ids.astype("<i8")).cast("B"),
                     _STRUCTURE_LENGTH.pack(structure_size)):
            write(part)
        before_structure = written
        write_structure(write)
        if written - before_structure != structure_size:  # faiss wrote other bytes than it counted
            raise RuntimeError(f"faiss wrote {written - before_structure} bytes, {structure_size} expected")
        handle.write(digest.digest())


def read_index_file(path: str | os.PathLike) -> IndexFile:
    """Read and check an index file written by `write_index_file` (or by format version 1)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read index file {path}: {exc.strerror or exc}") from exc
    n_bits, ntotal, backend, codes_at, structure_at, structure_length = _parse_index_file(data, path)
    n_bytes = code_bytes(n_bits)
    codes = np.frombuffer(data, np.uint8, count=ntotal * n_bytes, offset=codes_at).reshape(ntotal, n_bytes)
    ids = np.frombuffer(data, "<i8", count=ntotal, offset=codes_at + ntotal * n_bytes).astype(np.int64)
    structure = memoryview(data)[structure_at : structure_at + structure_length]
    return IndexFile(n_bits, backend, codes, ids, structure)


def _parse_index_file(data: bytes, path: Path) -> tuple[int, int, str, int, int, int]:
    """Check magic, version, lengths and checksum; return (n_bits, ntotal, backend string, offset of the
    codes, offset of faiss's structure, its length)."""
    if len(data) < _HEADER.size:
        if _MAGIC.startswith(data[: len(_MAGIC)]):
            raise InputError(f"index file {path} is truncated ({len(data)} bytes, header needs {_HEADER.size})")
        raise InputError(f"{path} is not a bganhash index file (no {_MAGIC!r} magic)")
    magic, version, n_bits, ntotal, name_length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise InputError(f"{path} is not a bganhash index file (magic {magic!r}, expected {_MAGIC!r})")
    if version not in _READABLE_VERSIONS:
        raise InputError(f"index file {path} has format version {version}; this bganhash reads versions "
                         f"{', '.join(map(str, _READABLE_VERSIONS))}")
    codes_at = _HEADER.size + name_length
    structure_at = codes_at + ntotal * (code_bytes(n_bits) + 8)
    structure_length = 0
    if version >= 2:
        if len(data) >= structure_at + _STRUCTURE_LENGTH.size + _DIGEST_SIZE:
            (structure_length,) = _STRUCTURE_LENGTH.unpack_from(data, structure_at)
        structure_at += _STRUCTURE_LENGTH.size
    expected = structure_at + structure_length + _DIGEST_SIZE
    if len(data) < expected:
        raise InputError(f"index file {path} is truncated ({len(data)} bytes, expected {expected})")
    if len(data) > expected:
        raise InputError(f"index file {path} has {len(data) - expected} unexpected trailing bytes")
    body, digest = memoryview(data)[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise InputError(f"index file {path} fails its checksum (corrupted)")
    try:
        backend = data[_HEADER.size : codes_at].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"index file {path} has an unreadable backend name") from exc
    return n_bits, ntotal, backend, codes_at, structure_at, structure_length
