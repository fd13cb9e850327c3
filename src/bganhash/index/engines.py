"""The searchers behind each backend kind: exact flat scans (numpy, or faiss when it ties as numpy does)
and faiss's approximate HNSW, multi-hash and IVF indexes, with the thread policy of faiss searches.

Every searcher holds positions 0..n-1 (the `Index` maps them to ids) and returns (distances int32,
positions int64) ordered by (distance, position); the approximate ones mark a slot they found nothing for
with position -1 and distance `MISSING_DISTANCE` (int32 max, as faiss).
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bganhash._system import import_faiss, usable_cpus
from bganhash._validation import InputError
from bganhash.codes import as_words, code_bytes, database_word_planes, distance_dtype, nearest
from bganhash.index.backend import Backend

__all__ = ["MISSING_DISTANCE", "faiss_flat_keeps_ties", "faiss_or_none", "make_searcher"]

MISSING_DISTANCE = int(np.iinfo(np.int32).max)
# Exact searches deeper than this run in numpy even when faiss is there: faiss's heaps cost
# k x 12 bytes per query in flight and log(k) per insertion; numpy's radix ranking does not care about k.
_FAISS_FLAT_MAX_K = 2048
# Fewer queries than this per core are searched in the calling thread alone.
_QUERIES_PER_THREAD = 4
_IVF_TRAINING_PER_LIST = 64  # codes sampled per inverted list to train the IVF centroids


def faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@contextlib.contextmanager
def _faiss_threads(faiss: Any, threads: int) -> Iterator[None]:
    """faiss's OpenMP threads for the calls inside; the setting is the calling thread's own (OpenMP's
    nthreads is per thread), restored after."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _threaded_search(faiss: Any, search: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`search(queries, k)` split by query over the usable cores: Python threads (faiss releases the GIL),
    one OpenMP thread each. faiss's own OpenMP search forks and joins its team once per 32 queries and
    65,536 codes, and each join waits for a descheduled thread when other work holds a core: on 2 cores
    with another process busy, 1,000 queries over 1,000,000 codes ran 6x slower and one query 250x slower
    that way than with these threads; on an idle machine both are equally fast (BENCHMARKS.md)."""
    workers = min(usable_cpus(), queries.shape[0] // _QUERIES_PER_THREAD) if queries.shape[0] > 1 else 1
    if workers <= 1:
        with _faiss_threads(faiss, 1):
            return search(queries, k)

    def run(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _faiss_threads(faiss, 1):
            return search(queries[rows], k)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run, np.array_split(np.arange(queries.shape[0]), workers)))
    return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])


@functools.lru_cache(maxsize=1)
def faiss_flat_keeps_ties() -> bool:
    """Whether the installed faiss's IndexBinaryFlat ranks equal distances by insertion order, as ours does.

    Checked on 70,000 one-byte codes (more than faiss's 65,536-code scan block) taking 3 values, so that
    every distance is shared by thousands of codes, for single queries and batches, shallow and deep k.
    """
    faiss = faiss_or_none()
    if faiss is None:
        return False
    rng = np.random.default_rng(0)
    database = (rng.integers(0, 3, size=(70_000, 1)) * 0x55).astype(np.uint8)
    queries = rng.integers(0, 256, size=(40, 1)).astype(np.uint8)
    index = faiss.IndexBinaryFlat(8)
    index.add(database)
    planes = database_word_planes(database)
    for rows, k in ((slice(0, 1), 1), (slice(0, 1), 50), (slice(None), 7), (slice(None), 300)):
        distances, positions = _threaded_search(faiss, index.search, queries[rows], k)
        want_distances, want_positions = nearest(as_words(queries[rows]), planes, np.uint8, k)
        if not (np.array_equal(positions, want_positions) and np.array_equal(distances, want_distances)):
            return False
    return True


class _NumpyFlat:
    """Exact search in numpy: XOR + popcount on uint64 words, then the k smallest by (distance, position)."""

    name = "numpy"  # `Index.engine`

    def __init__(self, n_bits: int, backend: Backend) -> None:
        self._planes = np.zeros((-(-n_bits // 64), 0), np.uint64)
        self._dtype = distance_dtype(code_bytes(n_bits))

    def add(self, packed: np.ndarray) -> None:
        self._planes = np.concatenate([self._planes, database_word_planes(packed)], axis=1)

    def rebuild(self, packed: np.ndarray) -> None:
        self._planes = database_word_planes(packed)

    def search(self, queries: np.ndarray, k: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances int32, positions int64) of the k nearest stored codes, k <= ntotal."""
        return nearest(as_words(queries), self._planes, self._dtype, k)

    def set_options(self, backend: Backend) -> None:
        pass

    def structure_size(self) -> int:
        return 0  # the codes are the whole structure; the file holds them already

    def write_structure(self, write: Any) -> None:
        pass


class _FaissFlat:
    """faiss.IndexBinaryFlat over the same packed codes (identical results: see `faiss_flat_keeps_ties`)."""

    name = "faiss-flat"  # `Index.engine`

    def __init__(self, n_bits: int, backend: Backend) -> None:
        self._faiss = import_faiss(f'backend="{backend}"')
        self._index = self._faiss.IndexBinaryFlat(8 * code_bytes(n_bits))
        self._dtype = distance_dtype(code_bytes(n_bits))

    def add(self, packed: np.ndarray) -> None:
        self._index.add(packed)

    def rebuild(self, packed: np.ndarray) -> None:
        self._index.reset()
        self._index.add(packed)

    def search(self, queries: np.ndarray, k: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if k > _FAISS_FLAT_MAX_K:
            return nearest(as_words(queries), database_word_planes(codes), self._dtype, k)
        distances, positions = _threaded_search(self._faiss, self._index.search, queries, k)
        return distances.astype(np.int32, copy=False), positions.astype(np.int64, copy=False)

    def set_options(self, backend: Backend) -> None:
        pass

    def structure_size(self) -> int:
        return 0

    def write_structure(self, write: Any) -> None:
        pass


class _FaissApproximate(ABC):
    """A faiss graph or hash index over positions; results re-ordered by (distance, position)."""

    name = ""  # `Index.engine`
    faiss_class = ""

    def __init__(self, n_bits: int, backend: Backend) -> None:
        self._faiss = import_faiss(f'backend="{backend}"')
        self._n_bits = n_bits
        self._backend = backend
        self._index = self._new_index()

    @abstractmethod
    def _new_index(self) -> Any:
        """An empty faiss index of the subclass's kind, built from `self._backend`'s options."""

    def add(self, packed: np.ndarray) -> None:
        with _faiss_threads(self._faiss, usable_cpus()):  # HNSW's insertion runs in parallel
            self._index.add(packed)

    def rebuild(self, packed: np.ndarray) -> None:
        """faiss cannot remove from these indexes: build a new one over the remaining codes."""
        self._index = self._new_index()
        self.add(packed)

    def set_options(self, backend: Backend) -> None:
        self._backend = backend

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k)

    def _depth(self, k: int) -> int:
        """How many results to ask faiss for, so that ties at the k-th distance can go by position."""
        return k

    def search(self, queries: np.ndarray, k: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the (more) results faiss finds, by (distance, position); missing ones last."""
        depth = min(codes.shape[0], max(k, self._depth(k)))
        distances, positions = _threaded_search(self._faiss, self._search, queries, depth)
        positions = positions.astype(np.int64, copy=False)
        distances = np.where(positions >= 0, distances, MISSING_DISTANCE).astype(np.int32)
        order = np.lexsort((np.where(positions >= 0, positions, np.iinfo(np.int64).max), distances), axis=1)[:, :k]
        return np.take_along_axis(distances, order, axis=1), np.take_along_axis(positions, order, axis=1)

    def structure_size(self) -> int:
        """Bytes of faiss's serialisation, counted by serialising into nothing (no copy of the graph)."""
        size = 0

        def count(chunk: bytes) -> int:
            nonlocal size
            size += len(chunk)
            return len(chunk)

        self.write_structure(count)
        return size

    def write_structure(self, write: Any) -> None:
        """faiss's serialisation, streamed to `write(chunk)` a megabyte at a time: a copy of a large graph
        (or two: faiss grows a buffer, numpy copies it) would double or triple the memory of saving."""
        self._faiss.write_index_binary(self._index, self._faiss.PyCallbackIOWriter(write))

    def load_structure(self, data: memoryview, ntotal: int) -> None:
        """Adopt a structure read from a file (InputError if it is not one of ours over ntotal codes)."""
        position = 0

        def read(size: int) -> bytes:
            nonlocal position
            chunk = bytes(data[position : position + size])
            position += len(chunk)
            return chunk

        try:
            index = self._faiss.read_index_binary(self._faiss.PyCallbackIOReader(read))
        except RuntimeError as exc:
            raise InputError(f"faiss cannot read the stored {self._backend.kind} structure: "
                             f"{str(exc).strip().splitlines()[-1]}") from None
        if position != len(data):
            raise InputError(f"the stored structure has {len(data) - position} bytes faiss does not read")
        expected = self._new_index()
        if type(index).__name__ != self.faiss_class or index.ntotal != ntotal or index.d != expected.d \
                or not self._same_shape(index, expected):
            raise InputError(f"the stored structure is a {type(index).__name__} over {index.ntotal} codes, not the "
                             f"{self.faiss_class} of {self._backend} over {ntotal}")
        self._index = index
        self.set_options(self._backend)

    def _same_shape(self, index: Any, expected: Any) -> bool:
        return True


class _FaissHNSW(_FaissApproximate):
    name = "faiss-hnsw"
    faiss_class = "IndexBinaryHNSW"

    def _new_index(self) -> Any:
        index = self._faiss.IndexBinaryHNSW(8 * code_bytes(self._n_bits), self._backend.size)
        index.hnsw.efConstruction = self._backend.option("efc")
        index.hnsw.efSearch = self._backend.option("ef")
        return index

    def set_options(self, backend: Backend) -> None:
        super().set_options(backend)
        self._index.hnsw.efSearch = backend.option("ef")

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = self._faiss.SearchParametersHNSW()
        params.efSearch = self._backend.option("ef")
        return self._index.search(queries, k, params=params)

    def _depth(self, k: int) -> int:
        return self._backend.option("ef")  # the candidate pool an HNSW search keeps anyway

    def _same_shape(self, index: Any, expected: Any) -> bool:
        return index.hnsw.nb_neighbors(1) == expected.hnsw.nb_neighbors(1)


class _FaissMultiHash(_FaissApproximate):
    name = "faiss-mih"
    faiss_class = "IndexBinaryMultiHash"

    def __init__(self, n_bits: int, backend: Backend) -> None:
        d = 8 * code_bytes(n_bits)
        tables = backend.size
        if d // tables < 1 or d // tables > 64:
            raise InputError(f"backend={str(backend)!r}: {tables} hash tables over {d}-bit codes give "
                             f"{d // tables} bits per table; it must be between 1 and 64 "
                             f"(use between {-(-d // 64)} and {d} tables)")
        super().__init__(n_bits, backend)

    def _new_index(self) -> Any:
        d = 8 * code_bytes(self._n_bits)
        index = self._faiss.IndexBinaryMultiHash(d, self._backend.size, d // self._backend.size)
        index.nflip = self._backend.option("nflip")
        return index

    def set_options(self, backend: Backend) -> None:
        super().set_options(backend)
        self._index.nflip = backend.option("nflip")

    def _depth(self, k: int) -> int:
        return 4 * k  # every candidate's distance is computed anyway; a deeper heap costs little

    def _same_shape(self, index: Any, expected: Any) -> bool:
        return (index.nhash, index.b) == (expected.nhash, expected.b)


class _FaissIVF(_FaissApproximate):
    name = "faiss-ivf"
    faiss_class = "IndexBinaryIVF"

    def _new_index(self) -> Any:
        d = 8 * code_bytes(self._n_bits)
        index = self._faiss.IndexBinaryIVF(self._faiss.IndexBinaryFlat(d), d, self._backend.size)
        index.cp.seed = 1234
        index.cp.min_points_per_centroid = 1  # we pass what we have: no warning under 39 per list
        index.cp.max_points_per_centroid = _IVF_TRAINING_PER_LIST
        index.nprobe = self._backend.option("nprobe")
        return index

    def add(self, packed: np.ndarray) -> None:
        if not self._index.is_trained:
            self._train(packed)
        super().add(packed)

    def _train(self, packed: np.ndarray) -> None:
        """Binary k-means over (a seeded sample of) the first codes added: the lists' centroids."""
        n_lists = self._backend.size
        if packed.shape[0] < n_lists:
            raise InputError(f'backend="{self._backend}" trains {n_lists} inverted lists on the first codes added, '
                             f"and needs at least {n_lists} of them; got {packed.shape[0]}. Add more codes at once, "
                             f"or use fewer lists (e.g. ivf:{max(1, packed.shape[0] // 39)}) or flat")
        count = min(packed.shape[0], _IVF_TRAINING_PER_LIST * n_lists)
        sample = np.sort(np.random.default_rng(0).choice(packed.shape[0], count, replace=False))
        with _faiss_threads(self._faiss, usable_cpus()):
            self._index.train(np.ascontiguousarray(packed[sample]))

    def rebuild(self, packed: np.ndarray) -> None:
        """Empty the lists and file the remaining codes again; the trained centroids stay."""
        if not self._index.is_trained:
            super().rebuild(packed)
            return
        self._index.reset()
        if packed.shape[0]:
            super().add(packed)

    def set_options(self, backend: Backend) -> None:
        super().set_options(backend)
        self._index.nprobe = backend.option("nprobe")

    def _depth(self, k: int) -> int:
        return 4 * k  # the codes tied at the k-th distance, so that ties go by position

    def _same_shape(self, index: Any, expected: Any) -> bool:
        return index.nlist == expected.nlist


def make_searcher(n_bits: int, backend: Backend) -> Any:
    if backend.kind == "hnsw":
        return _FaissHNSW(n_bits, backend)
    if backend.kind == "mih":
        return _FaissMultiHash(n_bits, backend)
    if backend.kind == "ivf":
        return _FaissIVF(n_bits, backend)
    engine = backend.option("engine")
    if engine == "faiss" or (engine == "auto" and faiss_or_none() is not None and faiss_flat_keeps_ties()):
        return _FaissFlat(n_bits, backend)
    return _NumpyFlat(n_bits, backend)
