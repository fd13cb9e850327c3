"""A Hamming-distance index over binary codes, shaped like faiss's binary indexes.

`Index(n_bits, backend="flat")` stores packed codes (uint8, (n, ceil(n_bits/8))) and int64 ids;
`search(codes, k)` returns (distances int32, ids int64), nearest first, ties broken by insertion
order, k capped at the number of codes held (so a huge k costs no memory); a slot an approximate backend
found no result for holds id -1 and distance `MISSING_DISTANCE` (int32 max, as faiss).

The backend ("flat", exact; "hnsw:M", "mih:T", "ivf:L", approximate: `bganhash.index.backend`) picks the
searcher (`bganhash.index.engines`). The approximate backends return their results ordered by (distance,
insertion order) too. Ids are ours, one int64 array for every backend (faiss indexes positions, so
`remove_ids` rebuilds the approximate structures; IVF keeps its trained centroids). Search-time parameters
(ef, nflip, nprobe) can be changed with `set_params`; they are part of `backend` and of the saved file.

`save` writes one versioned, checksummed file (`bganhash.index.fileformat`): the codes and ids, then faiss's
own serialisation of the graph or hash tables. `Index.load` reads format versions 1 and 2 and refuses
truncated, foreign, unsupported or corrupted files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._validation import InputError, check_positive_int
from bganhash.codes import check_packed, code_bytes, to_bits
from bganhash.index.backend import Backend, parse_backend
from bganhash.index.engines import MISSING_DISTANCE, faiss_or_none, make_searcher
from bganhash.index.fileformat import read_index_file, write_index_file

__all__ = ["Index"]


class Index:
    """Binary codes with int64 ids, searched by Hamming distance (faiss's add/search/save/load shape).

    Parameters
    ----------
    n_bits : int
        Code length; codes are (n, n_bits) arrays of {-1,+1}, {0,1} or bool.
    backend : str
        "flat" (exact; faiss when installed, else numpy: identical results), "hnsw:M[,ef=E][,efc=C]",
        "mih:T[,nflip=F]" or "ivf:L[,nprobe=P]" (approximate, need faiss-cpu). See the module docstring
        and `BACKENDS`.
    """

    def __init__(self, n_bits: int, backend: str | Backend = "flat") -> None:
        self.n_bits = check_positive_int(n_bits, "n_bits")
        self._backend = parse_backend(backend)
        self._searcher = make_searcher(self.n_bits, self._backend)
        self._codes = np.zeros((0, self.n_bytes), np.uint8)
        self._ids = np.zeros(0, np.int64)

    @property
    def backend(self) -> str:
        """The canonical backend string, every option filled in, e.g. "hnsw:32,ef=128,efc=200"."""
        return str(self._backend)

    @property
    def engine(self) -> str:
        """What runs the search: "numpy", "faiss-flat", "faiss-hnsw", "faiss-mih" or "faiss-ivf"."""
        return self._searcher.name

    @property
    def exact(self) -> bool:
        """True for "flat": results equal a brute-force ranking with ties by insertion order."""
        return self._backend.exact

    @property
    def n_bytes(self) -> int:
        return code_bytes(self.n_bits)

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

    def set_params(self, **options: Any) -> Index:
        """Change search-time options, e.g. `set_params(ef=128)` (HNSW), `set_params(nflip=2)` (multi-hash)
        or `set_params(nprobe=16)` (IVF)."""
        backend = self._backend.with_options(**options)
        if backend.kind == "flat":
            self._searcher = make_searcher(self.n_bits, backend)
            self._searcher.rebuild(self._codes)
        else:
            self._searcher.set_options(backend)
        self._backend = backend
        return self

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
        self._codes = np.concatenate([self._codes, packed]) if self.ntotal else packed.copy()
        self._ids = np.concatenate([self._ids, new_ids])

    def search(self, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query: (distances int32, ids int64), both (n_queries, min(k, ntotal)).

        Nearest first, ties by insertion order; k is capped at ntotal (faiss would pad to k: here a k of 10**8
        allocates nothing for the slots no code could fill); slots beyond what an approximate backend found
        hold id -1 and distance MISSING_DISTANCE (int32 max).
        """
        return self.search_packed(self._pack_queries(codes), k)

    def search_packed(self, packed: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for packed queries, uint8 (n_queries, ceil(n_bits/8))."""
        queries = check_packed(packed, "packed queries", self.n_bits)
        k = min(check_positive_int(k, "k"), self.ntotal)  # capped: no slot beyond what the index holds
        if not k or not queries.shape[0]:
            shape = (queries.shape[0], k)
            return np.full(shape, MISSING_DISTANCE, np.int32), np.full(shape, -1, np.int64)
        distances, positions = self._searcher.search(queries, k, self._codes)
        ids = self._ids[positions]
        if not self.exact:  # the approximate backends mark what they did not find with position -1
            ids[positions < 0] = -1
        return distances, ids

    def ranking(self, codes: Any) -> tuple[np.ndarray, np.ndarray]:
        """The whole index ranked for each query (k = ntotal), for evaluation."""
        if self.ntotal == 0:
            raise InputError("the index is empty; add codes before ranking")
        return self.search(codes, self.ntotal)

    def remove_ids(self, ids: Any) -> int:
        """Remove the codes with these ids (unknown ids are ignored); return how many were removed.

        The approximate structures index positions: they are rebuilt over the rest (IVF keeps its centroids).
        """
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
        """Write the index to one file (atomic): header, backend string, codes, ids, faiss's structure (for
        hnsw and mih) and a SHA-256 of all before it. The flat engine is not recorded (results do not
        depend on it): the loading machine picks its own."""
        saved = self._backend.with_options(engine="auto") if self._backend.kind == "flat" else self._backend
        write_index_file(path, self.n_bits, str(saved), self._codes, self._ids, self._searcher.structure_size(),
                         self._searcher.write_structure)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | Backend | None = None) -> Index:
        """Read an index written by `save`. `backend` overrides the stored one: with the same build
        options the stored structure is kept (e.g. "hnsw:32,ef=128" for a file saved as "hnsw:32,ef=64"),
        otherwise the index is rebuilt from the stored codes ("flat" searches any file exactly)."""
        path = Path(path)
        stored_file = read_index_file(path)
        try:
            stored = parse_backend(stored_file.backend)
        except InputError as exc:
            raise InputError(f"index file {path} uses a backend this bganhash does not know: {exc}") from None
        if stored.kind == "flat":  # version 1 named the engine ("faiss"); the loading machine picks its own
            stored = stored.with_options(engine="auto")
        wanted = parse_backend(backend) if backend is not None else stored
        if wanted.kind != "flat" and faiss_or_none() is None:
            raise InputError(f'index file {path} uses backend "{wanted}", which needs faiss (pip install '
                             f'faiss-cpu); Index.load(path, backend="flat") searches its codes exactly without it')
        reuse = len(stored_file.structure) > 0 and wanted.build_key == stored.build_key
        index = cls(stored_file.n_bits, stored if reuse else wanted)
        try:
            if reuse:
                index._adopt(stored_file.codes.copy(), stored_file.ids, stored_file.structure)
                index.set_params(**wanted.search_options)
            else:
                index.add_packed(stored_file.codes.copy(), stored_file.ids)
        except InputError as exc:
            raise InputError(f"index file {path} holds invalid content: {exc}") from exc
        return index

    def _adopt(self, codes: np.ndarray, ids: np.ndarray, structure: memoryview) -> None:
        """Take codes, ids and faiss's stored structure over them as they are (from a checksummed file)."""
        codes = check_packed(codes, "stored codes", self.n_bits)
        self._ids = self._check_new_ids(ids, codes.shape[0])
        self._searcher.load_structure(structure, codes.shape[0])
        self._codes = codes

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


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
