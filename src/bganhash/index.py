"""A Hamming-distance index over binary codes, shaped like faiss's binary indexes.

`Index(n_bits, backend="flat")` stores packed codes (uint8, (n, ceil(n_bits/8))) and int64 ids;
`search(codes, k)` returns (distances int32, ids int64), nearest first, ties broken by insertion
order; a slot with no result holds id -1 and distance `MISSING_DISTANCE` (int32 max, as faiss).
Backends are picked by name from `BACKENDS`: "flat" (numpy popcount) and "faiss"
(`faiss.IndexBinaryFlat`), which give identical results. `save` writes one versioned file with a
SHA-256 checksum; `Index.load` refuses truncated, foreign, unsupported or corrupted files.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import atomic_write
from bganhash._validation import InputError, check_positive_int
from bganhash.codes import as_words, check_packed, database_word_planes, distance_dtype, nearest, to_bits

__all__ = ["BACKENDS", "Index", "MISSING_DISTANCE"]

MISSING_DISTANCE = int(np.iinfo(np.int32).max)
_MAGIC = b"BGANIDX\x00"
_FORMAT_VERSION = 1
# magic, format version, n_bits, ntotal, length of the backend name (its UTF-8 bytes follow)
_HEADER = struct.Struct("<8sIIQH")
_DIGEST_SIZE = hashlib.sha256().digest_size


class _FlatBackend:
    """Exhaustive search in numpy: XOR + popcount on uint64 words, stable radix ranking."""

    def __init__(self, n_bits: int) -> None:
        self._planes = np.zeros((-(-n_bits // 64), 0), np.uint64)
        self._dtype = distance_dtype((n_bits + 7) // 8)

    def add(self, packed: np.ndarray) -> None:
        self._planes = np.concatenate([self._planes, database_word_planes(packed)], axis=1)

    def rebuild(self, packed: np.ndarray) -> None:
        self._planes = database_word_planes(packed)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32, positions int64) of the k nearest stored codes, k <= ntotal."""
        return nearest(as_words(queries), self._planes, self._dtype, k)


class _FaissBackend:
    """faiss.IndexBinaryFlat over the same packed codes; its heap keeps ties in insertion order."""

    def __init__(self, n_bits: int) -> None:
        try:
            import faiss
        except ImportError as exc:
            raise InputError('backend="faiss" needs faiss; install it with: pip install faiss-cpu') from exc
        self._faiss = faiss
        self._index = faiss.IndexBinaryFlat(8 * ((n_bits + 7) // 8))

    def add(self, packed: np.ndarray) -> None:
        self._index.add(packed)

    def rebuild(self, packed: np.ndarray) -> None:
        self._index.reset()
        self._index.add(packed)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, positions = self._index.search(queries, k)
        return distances.astype(np.int32, copy=False), positions.astype(np.int64, copy=False)


BACKENDS: dict[str, type] = {"flat": _FlatBackend, "faiss": _FaissBackend}


class Index:
    """Binary codes with int64 ids, searched by Hamming distance (faiss's add/search/save/load shape).

    Parameters
    ----------
    n_bits : int
        Code length; codes are (n, n_bits) arrays of {-1,+1}, {0,1} or bool.
    backend : str
        A name in `BACKENDS`: "flat" (numpy) or "faiss" (needs faiss-cpu). Results are identical.
    """

    def __init__(self, n_bits: int, backend: str = "flat") -> None:
        self.n_bits = check_positive_int(n_bits, "n_bits")
        if backend not in BACKENDS:
            raise InputError(f"backend={backend!r} is not one of {sorted(BACKENDS)}")
        self.backend = backend
        self._searcher = BACKENDS[backend](self.n_bits)
        self._codes = np.zeros((0, self.n_bytes), np.uint8)
        self._ids = np.zeros(0, np.int64)

    @property
    def n_bytes(self) -> int:
        return (self.n_bits + 7) // 8

    @property
    def ntotal(self) -> int:
        return int(self._ids.size)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"Index(n_bits={self.n_bits}, backend={self.backend!r}, ntotal={self.ntotal})"

    @property
    def codes(self) -> np.ndarray:
        """Packed codes (ntotal, n_bytes) uint8 in insertion order (read-only view)."""
        return _read_only(self._codes)

    @property
    def ids(self) -> np.ndarray:
        """Ids (ntotal,) int64 in insertion order (read-only view)."""
        return _read_only(self._ids)

    def add(self, codes: Any, ids: Any = None) -> None:
        """Add codes (n, n_bits); ids default to consecutive integers after the largest id so far."""
        bits = to_bits(codes, "codes")
        if bits.shape[1] != self.n_bits:
            raise InputError(f"codes have {bits.shape[1]} bits but this index holds {self.n_bits}-bit codes")
        self.add_packed(np.packbits(bits, axis=1), ids)

    def add_packed(self, packed: Any, ids: Any = None) -> None:
        """Add already packed codes, uint8 (n, ceil(n_bits/8)) as `pack_codes` makes them."""
        packed = check_packed(packed, "packed", self.n_bits)
        new_ids = self._check_new_ids(ids, packed.shape[0])
        if packed.shape[0] == 0:
            return
        self._searcher.add(packed)
        self._codes = np.concatenate([self._codes, packed])
        self._ids = np.concatenate([self._ids, new_ids])

    def search(self, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query: (distances int32, ids int64), both (n_queries, k).

        Nearest first, ties by insertion order; slots beyond ntotal hold id -1 and distance
        MISSING_DISTANCE (int32 max).
        """
        return self.search_packed(self._pack_queries(codes), k)

    def search_packed(self, packed: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for packed queries, uint8 (n_queries, ceil(n_bits/8))."""
        queries = check_packed(packed, "packed queries", self.n_bits)
        k = check_positive_int(k, "k")
        distances = np.full((queries.shape[0], k), MISSING_DISTANCE, np.int32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        found = min(k, self.ntotal)
        if found and queries.shape[0]:
            found_distances, positions = self._searcher.search(queries, found)
            distances[:, :found] = found_distances
            ids[:, :found] = self._ids[positions]
        return distances, ids

    def ranking(self, codes: Any) -> tuple[np.ndarray, np.ndarray]:
        """The whole index ranked for each query (k = ntotal), for evaluation."""
        if self.ntotal == 0:
            raise InputError("the index is empty; add codes before ranking")
        return self.search(codes, self.ntotal)

    def remove_ids(self, ids: Any) -> int:
        """Remove the codes with these ids (unknown ids are ignored); return how many were removed."""
        doomed = np.isin(self._ids, _as_id_array(ids, "ids"))
        removed = int(doomed.sum())
        if removed:
            self._codes = self._codes[~doomed]
            self._ids = self._ids[~doomed]
            self._searcher.rebuild(self._codes)
        return removed

    def reconstruct(self, id: int) -> np.ndarray:
        """The packed code (n_bytes,) uint8 stored under `id`."""
        where = np.flatnonzero(self._ids == id)
        if where.size == 0:
            raise InputError(f"id {id!r} is not in the index")
        return self._codes[where[0]].copy()

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to one file: header, codes, ids and a SHA-256 of all before it (atomic)."""
        backend = self.backend.encode("utf-8")
        body = b"".join(
            [
                _HEADER.pack(_MAGIC, _FORMAT_VERSION, self.n_bits, self.ntotal, len(backend)),
                backend,
                self._codes.tobytes(),
                self._ids.astype("<i8").tobytes(),
            ]
        )
        with atomic_write(path, "wb") as handle:
            handle.write(body)
            handle.write(hashlib.sha256(body).digest())

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> Index:
        """Read an index written by `save`; `backend` overrides the stored one."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read index file {path}: {exc.strerror or exc}") from exc
        n_bits, ntotal, stored_backend, payload = _parse_index_file(data, path)
        index = cls(n_bits, backend or stored_backend)
        n_bytes = index.n_bytes
        codes = np.frombuffer(payload, np.uint8, count=ntotal * n_bytes).reshape(ntotal, n_bytes)
        ids = np.frombuffer(payload, "<i8", count=ntotal, offset=ntotal * n_bytes).astype(np.int64)
        try:
            index.add_packed(codes.copy(), ids)
        except InputError as exc:
            raise InputError(f"index file {path} holds invalid content: {exc}") from exc
        return index

    def _pack_queries(self, codes: Any) -> np.ndarray:
        bits = to_bits(codes, "query codes")
        if bits.shape[1] != self.n_bits:
            raise InputError(f"query codes have {bits.shape[1]} bits but this index holds {self.n_bits}-bit codes")
        return np.packbits(bits, axis=1)

    def _check_new_ids(self, ids: Any, n: int) -> np.ndarray:
        """Ids for n new codes: given (unique, >= 0, not yet used) or consecutive after the largest."""
        if ids is None:
            first = int(self._ids.max()) + 1 if self.ntotal else 0
            return np.arange(first, first + n, dtype=np.int64)
        new_ids = _as_id_array(ids, "ids")
        if new_ids.size != n:
            raise InputError(f"got {new_ids.size} ids for {n} codes")
        if new_ids.size and new_ids.min() < 0:
            raise InputError(f"ids must be >= 0 (-1 marks a missing result); got {int(new_ids.min())}")
        unique, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"duplicate ids: {unique[counts > 1][:5].tolist()}")
        taken = unique[np.isin(unique, self._ids)]
        if taken.size:
            raise InputError(f"ids already in the index: {taken[:5].tolist()}")
        return new_ids


def _as_id_array(ids: Any, name: str) -> np.ndarray:
    """Ids as a 1-D int64 array (integers only, never cast from floats)."""
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be integers; got dtype {array.dtype}")
    return array.astype(np.int64)


def _parse_index_file(data: bytes, path: Path) -> tuple[int, int, str, bytes]:
    """Check magic, version, length and checksum; return (n_bits, ntotal, backend, payload)."""
    if len(data) < _HEADER.size:
        if _MAGIC.startswith(data[: len(_MAGIC)]):
            raise InputError(f"index file {path} is truncated ({len(data)} bytes, header needs {_HEADER.size})")
        raise InputError(f"{path} is not a bganhash index file (no {_MAGIC!r} magic)")
    magic, version, n_bits, ntotal, name_length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise InputError(f"{path} is not a bganhash index file (magic {magic!r}, expected {_MAGIC!r})")
    if version != _FORMAT_VERSION:
        raise InputError(f"index file {path} has format version {version}; this bganhash reads version {_FORMAT_VERSION}")
    payload_start = _HEADER.size + name_length
    expected = payload_start + ntotal * ((n_bits + 7) // 8 + 8) + _DIGEST_SIZE
    if len(data) < expected:
        raise InputError(f"index file {path} is truncated ({len(data)} bytes, expected {expected})")
    if len(data) > expected:
        raise InputError(f"index file {path} has {len(data) - expected} unexpected trailing bytes")
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise InputError(f"index file {path} fails its checksum (corrupted)")
    try:
        backend = data[_HEADER.size : payload_start].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"index file {path} has an unreadable backend name") from exc
    return n_bits, ntotal, backend, data[payload_start:-_DIGEST_SIZE]


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
