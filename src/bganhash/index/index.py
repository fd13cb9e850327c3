"""A Hamming-distance index over binary codes, shaped like faiss's binary indexes.

`Index(n_bits, backend="flat")` stores packed codes (uint8, (n, ceil(n_bits/8))) and int64 ids;
`search(codes, k)` returns (distances int32, ids int64), nearest first, ties broken by insertion
order; a slot with no result holds id -1 and distance `MISSING_DISTANCE` (int32 max, as faiss).

The backend is picked by a short string (`parse_backend` reads it, `BACKENDS` lists the kinds):

- "flat": exact search. It runs on faiss's `IndexBinaryFlat` when faiss is installed: faiss keeps
  ties in insertion order (its scan replaces a heap entry only on a strictly smaller distance, and
  its heap compares ids on equal distances), so the results are identical to numpy's; this is
  checked once per process before faiss is trusted. Without faiss (or with "flat,engine=numpy") it
  is an XOR + popcount scan in numpy. Both give exactly the same (distances, ids).
- "hnsw:M[,ef=E][,efc=C]": faiss's `IndexBinaryHNSW`, a graph with M links per node built with
  efConstruction C, searched with efSearch E. Approximate, sublinear.
- "mih:T[,nflip=F]": faiss's `IndexBinaryMultiHash`: T hash tables on T disjoint substrings of the
  code, probing the buckets up to F bit flips away. Approximate; every code within distance
  T*(F+1)-1 of the query is a candidate, so results whose k-th distance is below that are exact.
- "ivf:L[,nprobe=P]": faiss's `IndexBinaryIVF`: the codes filed in L inverted lists by a binary
  k-means (trained on the first codes added, at least L of them), a query scanning the P lists of
  the nearest centroids. Approximate, sublinear; the fastest at high recall on clustered codes.

The approximate backends return their results ordered by (distance, insertion order) too. Ids are
ours, one int64 array for every backend (faiss indexes positions, so `remove_ids` rebuilds the
approximate structures; IVF keeps its trained centroids). Search-time parameters (ef, nflip, nprobe) can be
changed with `set_params`; they are part of `backend` and of the saved file.

`save` writes one versioned file with a SHA-256 checksum: the codes and ids (always, so that any
file can be searched exactly without faiss), then faiss's own serialisation of the graph or hash
tables. `Index.load` reads format versions 1 and 2 and refuses truncated, foreign, unsupported or
corrupted files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bganhash._io import atomic_write
from bganhash._system import import_faiss, usable_cpus
from bganhash._validation import InputError, check_positive_int
from bganhash.codes import as_words, check_packed, database_word_planes, distance_dtype, nearest, to_bits

__all__ = ["BACKENDS", "Backend", "Index", "MISSING_DISTANCE", "parse_backend"]

MISSING_DISTANCE = int(np.iinfo(np.int32).max)
_MAGIC = b"BGANIDX\x00"
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
# magic, format version, n_bits, ntotal, length of the backend string (its UTF-8 bytes follow). Version 2
# then holds codes, ids, the length of faiss's serialised structure (uint64) and that structure.
_HEADER = struct.Struct("<8sIIQH")
_STRUCTURE_LENGTH = struct.Struct("<Q")
_DIGEST_SIZE = hashlib.sha256().digest_size
# Exact searches deeper than this run in numpy even when faiss is there: faiss's heaps cost
# k x 12 bytes per query in flight and log(k) per insertion; numpy's radix ranking does not care about k.
_FAISS_FLAT_MAX_K = 2048
# Fewer queries than this per core are searched in the calling thread alone.
_QUERIES_PER_THREAD = 4
_IVF_TRAINING_PER_LIST = 64  # codes sampled per inverted list to train the IVF centroids

BACKENDS: dict[str, str] = {
    "flat": "exact scan (faiss IndexBinaryFlat when installed, else numpy); options: engine=auto|faiss|numpy",
    "hnsw": "faiss IndexBinaryHNSW, approximate: hnsw:M (links per node, default 32); options: ef= (efSearch, "
            "default 128), efc= (efConstruction, default 200)",
    "mih": "faiss IndexBinaryMultiHash, approximate: mih:T (hash tables, default 4); options: nflip= "
           "(bit flips probed per table, default 1)",
    "ivf": "faiss IndexBinaryIVF, approximate: ivf:L (inverted lists, default 1024; trained on the first codes "
           "added, at least L of them); options: nprobe= (lists scanned per query, default 8)",
}
_ENGINES = ("auto", "faiss", "numpy")
# kind -> (name of the number after the colon, its default, its minimum), or None when it takes none
_SIZES: dict[str, tuple[str, int, int] | None] = {
    "flat": None, "hnsw": ("M", 32, 2), "mih": ("tables", 4, 1), "ivf": ("lists", 1024, 1),
}
# kind -> {option: (default, minimum or allowed strings, set at search time?)}
_OPTIONS: dict[str, dict[str, tuple[Any, Any, bool]]] = {
    "flat": {"engine": ("auto", _ENGINES, True)},
    # efConstruction 200, not faiss's 40: on learned codes, full of ties and duplicates, 40 leaves a graph
    # whose recall@10 stays below 0.85 at any efSearch (BENCHMARKS.md); 200 triples the build time.
    "hnsw": {"ef": (128, 1, True), "efc": (200, 1, False)},
    "mih": {"nflip": (1, 0, True)},
    # nprobe 8 of 1,024 lists: recall@10 above 0.95 (ids and distances) on a million learned 64-bit codes
    "ivf": {"nprobe": (8, 1, True)},
}
_EXAMPLES = '"flat", "hnsw:32", "hnsw:32,ef=256", "mih:4", "mih:4,nflip=2", "ivf:1024,nprobe=8"'


@dataclass(frozen=True)
class Backend:
    """A parsed backend string: its kind, the number after the colon (HNSW's M, the multi-hash tables)
    and its options, every one filled in. `str(backend)` gives the canonical string."""

    kind: str
    size: int | None
    options: tuple[tuple[str, Any], ...]

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    @property
    def build_key(self) -> tuple:
        """What the built structure depends on (the search-time options do not count)."""
        return self.kind, self.size, tuple((k, v) for k, v in self.options if not _OPTIONS[self.kind][k][2])

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def with_options(self, **options: Any) -> Backend:
        merged = dict(self.options)
        for name, value in options.items():
            if name not in merged:
                raise InputError(f"{self.kind} has no option {name!r}; its options are {', '.join(merged)}")
            if not _OPTIONS[self.kind][name][2]:
                raise InputError(f"{name} is fixed when the {self.kind} index is built; make a new index to change it")
            merged[name] = _check_option(self.kind, name, value)
        return replace(self, options=tuple(merged.items()))

    def __str__(self) -> str:
        head = self.kind if self.size is None else f"{self.kind}:{self.size}"
        shown = [(k, v) for k, v in self.options if not (self.kind == "flat" and k == "engine" and v == "auto")]
        return ",".join([head, *(f"{k}={v}" for k, v in shown)])


def parse_backend(spec: str | Backend) -> Backend:
    """Read a backend string such as "flat", "hnsw:32,ef=64" or "mih:4,nflip=2" (InputError if malformed).

    "faiss", the name of the faiss flat backend before backend strings, means "flat,engine=faiss".
    """
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"backend={spec!r} must be a string such as {_EXAMPLES}")
    text = spec.strip().lower()
    if text == "faiss":
        text = "flat,engine=faiss"
    head, *option_texts = [part.strip() for part in text.split(",")]
    kind, colon, size_text = (part.strip() for part in head.partition(":"))
    if kind not in BACKENDS:
        raise InputError(f"backend={spec!r}: unknown kind {kind!r}; use one of {', '.join(BACKENDS)} "
                         f"(e.g. {_EXAMPLES})")
    size_rule = _SIZES[kind]
    if size_rule is None:
        if colon:
            raise InputError(f"backend={spec!r}: {kind} takes no number after a colon")
        size = None
    else:
        name, default, minimum = size_rule
        if not colon:
            size = default
        elif not _is_whole_number(size_text) or int(size_text) < minimum:
            raise InputError(f"backend={spec!r}: {kind}:{name} needs a whole number {name} >= {minimum} after "
                             f"the colon, e.g. {kind}:{default}")
        else:
            size = int(size_text)
    options = {name: rule[0] for name, rule in _OPTIONS[kind].items()}
    seen = set()
    for option_text in option_texts:
        name, equals, value = (part.strip() for part in option_text.partition("="))
        if not equals or not name or not value:
            raise InputError(f"backend={spec!r}: options look like name=value after a comma, e.g. {_EXAMPLES}")
        if name not in options:
            raise InputError(f"backend={spec!r}: {kind} has no option {name!r}; its options are "
                             f"{', '.join(options) or 'none'}")
        if name in seen:
            raise InputError(f"backend={spec!r}: option {name!r} is given twice")
        seen.add(name)
        options[name] = _check_option(kind, name, value, spec)
    return Backend(kind, size, tuple(options.items()))


def _is_whole_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _check_option(kind: str, name: str, value: Any, spec: Any = None) -> Any:
    """An option's value checked against its rule (a minimum, or the allowed strings); ints from text."""
    _, rule, _ = _OPTIONS[kind][name]
    where = f"backend={spec!r}: " if spec is not None else ""
    if isinstance(rule, tuple):
        if value not in rule:
            raise InputError(f"{where}{name}={value!r} must be one of {', '.join(rule)}")
        return value
    if isinstance(value, str) and _is_whole_number(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < rule:
        raise InputError(f"{where}{name}={value!r} must be a whole number >= {rule}")
    return int(value)


# ---------------------------------------------------------------------------------------------- engines


def _faiss_or_none() -> Any:
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
    faiss = _faiss_or_none()
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

    def __init__(self, n_bits: int, backend: Backend) -> None:
        self._planes = np.zeros((-(-n_bits // 64), 0), np.uint64)
        self._dtype = distance_dtype((n_bits + 7) // 8)

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

    def __init__(self, n_bits: int, backend: Backend) -> None:
        self._faiss = import_faiss(f'backend="{backend}"')
        self._index = self._faiss.IndexBinaryFlat(8 * ((n_bits + 7) // 8))
        self._dtype = distance_dtype((n_bits + 7) // 8)

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
    faiss_class = "IndexBinaryHNSW"

    def _new_index(self) -> Any:
        index = self._faiss.IndexBinaryHNSW(8 * ((self._n_bits + 7) // 8), self._backend.size)
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
    faiss_class = "IndexBinaryMultiHash"

    def __init__(self, n_bits: int, backend: Backend) -> None:
        d = 8 * ((n_bits + 7) // 8)
        tables = backend.size
        if d // tables < 1 or d // tables > 64:
            raise InputError(f"backend={str(backend)!r}: {tables} hash tables over {d}-bit codes give "
                             f"{d // tables} bits per table; it must be between 1 and 64 "
                             f"(use between {-(-d // 64)} and {d} tables)")
        super().__init__(n_bits, backend)

    def _new_index(self) -> Any:
        d = 8 * ((self._n_bits + 7) // 8)
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
    faiss_class = "IndexBinaryIVF"

    def _new_index(self) -> Any:
        d = 8 * ((self._n_bits + 7) // 8)
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


def _make_searcher(n_bits: int, backend: Backend) -> Any:
    if backend.kind == "hnsw":
        return _FaissHNSW(n_bits, backend)
    if backend.kind == "mih":
        return _FaissMultiHash(n_bits, backend)
    if backend.kind == "ivf":
        return _FaissIVF(n_bits, backend)
    engine = backend.option("engine")
    if engine == "faiss" or (engine == "auto" and _faiss_or_none() is not None and faiss_flat_keeps_ties()):
        return _FaissFlat(n_bits, backend)
    return _NumpyFlat(n_bits, backend)


# ---------------------------------------------------------------------------------------------- the index


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
        self._searcher = _make_searcher(self.n_bits, self._backend)
        self._codes = np.zeros((0, self.n_bytes), np.uint8)
        self._ids = np.zeros(0, np.int64)

    @property
    def backend(self) -> str:
        """The canonical backend string, every option filled in, e.g. "hnsw:32,ef=128,efc=200"."""
        return str(self._backend)

    @property
    def engine(self) -> str:
        """What runs the search: "numpy", "faiss-flat", "faiss-hnsw", "faiss-mih" or "faiss-ivf"."""
        return {_NumpyFlat: "numpy", _FaissFlat: "faiss-flat", _FaissHNSW: "faiss-hnsw",
                _FaissMultiHash: "faiss-mih", _FaissIVF: "faiss-ivf"}[type(self._searcher)]

    @property
    def exact(self) -> bool:
        """True for "flat": results equal a brute-force ranking with ties by insertion order."""
        return self._backend.exact

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

    def set_params(self, **options: Any) -> Index:
        """Change search-time options, e.g. `set_params(ef=128)` (HNSW), `set_params(nflip=2)` (multi-hash)
        or `set_params(nprobe=16)` (IVF)."""
        backend = self._backend.with_options(**options)
        if backend.kind == "flat":
            self._searcher = _make_searcher(self.n_bits, backend)
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
        """The k nearest codes of each query: (distances int32, ids int64), both (n_queries, k).

        Nearest first, ties by insertion order; slots beyond ntotal (or, for the approximate backends,
        beyond what they found) hold id -1 and distance MISSING_DISTANCE (int32 max).
        """
        return self.search_packed(self._pack_queries(codes), k)

    def search_packed(self, packed: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for packed queries, uint8 (n_queries, ceil(n_bits/8))."""
        queries = check_packed(packed, "packed queries", self.n_bits)
        k = check_positive_int(k, "k")
        found = min(k, self.ntotal)
        if not found or not queries.shape[0]:
            shape = (queries.shape[0], k)
            return np.full(shape, MISSING_DISTANCE, np.int32), np.full(shape, -1, np.int64)
        distances, positions = self._searcher.search(queries, found, self._codes)
        ids = self._ids[positions]
        if not self.exact:  # the approximate backends mark what they did not find with position -1
            ids[positions < 0] = -1
        if found < k:
            padding = ((0, 0), (0, k - found))
            distances = np.pad(distances, padding, constant_values=MISSING_DISTANCE)
            ids = np.pad(ids, padding, constant_values=-1)
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
        backend = str(saved).encode("utf-8")
        structure_size = self._searcher.structure_size()
        digest = hashlib.sha256()
        written = 0
        with atomic_write(path, "wb") as handle:

            def write(chunk: Any) -> int:
                nonlocal written
                digest.update(chunk)
                written += len(chunk)
                return handle.write(chunk)

            for part in (_HEADER.pack(_MAGIC, _FORMAT_VERSION, self.n_bits, self.ntotal, len(backend)), backend,
                         memoryview(self._codes).cast("B"), memoryview(self._ids.astype("<i8")).cast("B"),
                         _STRUCTURE_LENGTH.pack(structure_size)):
                write(part)
            before_structure = written
            self._searcher.write_structure(write)
            if written - before_structure != structure_size:  # faiss wrote other bytes than it counted
                raise RuntimeError(f"faiss wrote {written - before_structure} bytes, {structure_size} expected")
            handle.write(digest.digest())

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | Backend | None = None) -> Index:
        """Read an index written by `save`. `backend` overrides the stored one: with the same build
        options the stored structure is kept (e.g. "hnsw:32,ef=128" for a file saved as "hnsw:32,ef=64"),
        otherwise the index is rebuilt from the stored codes ("flat" searches any file exactly)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read index file {path}: {exc.strerror or exc}") from exc
        n_bits, ntotal, stored_name, codes_at, structure_at, structure_length = _parse_index_file(data, path)
        try:
            stored = parse_backend(stored_name)
        except InputError as exc:
            raise InputError(f"index file {path} uses a backend this bganhash does not know: {exc}") from None
        if stored.kind == "flat":  # version 1 named the engine ("faiss"); the loading machine picks its own
            stored = stored.with_options(engine="auto")
        wanted = parse_backend(backend) if backend is not None else stored
        if wanted.kind != "flat" and _faiss_or_none() is None:
            raise InputError(f'index file {path} uses backend "{wanted}", which needs faiss (pip install '
                             f'faiss-cpu); Index.load(path, backend="flat") searches its codes exactly without it')
        n_bytes = (n_bits + 7) // 8
        codes = np.frombuffer(data, np.uint8, count=ntotal * n_bytes, offset=codes_at).reshape(ntotal, n_bytes)
        ids = np.frombuffer(data, "<i8", count=ntotal, offset=codes_at + ntotal * n_bytes).astype(np.int64)
        reuse = structure_length > 0 and wanted.build_key == stored.build_key
        index = cls(n_bits, stored if reuse else wanted)
        try:
            if reuse:
                structure = memoryview(data)[structure_at : structure_at + structure_length]
                index._adopt(codes.copy(), ids, structure)
                index.set_params(**{k: v for k, v in wanted.options if _OPTIONS[wanted.kind][k][2]})
            else:
                index.add_packed(codes.copy(), ids)
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
    structure_at = codes_at + ntotal * ((n_bits + 7) // 8 + 8)
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


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
