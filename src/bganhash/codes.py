"""Binary codes: validation, packing to faiss's uint8 layout, and Hamming distances by popcount.

At the API codes are {-1,+1}, {0,1} or bool arrays of shape (n, n_bits); inside they are packed
to uint8 (n, ceil(n_bits / 8)), most significant bit first (`np.packbits`), with zero padding bits.
Distances XOR the packed codes as uint64 words and count bits with `np.bitwise_count`, a block of
queries at a time, the blocks spread over the available cores (numpy releases the GIL).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from bganhash._system import usable_cpus
from bganhash._validation import InputError, as_2d_array

__all__ = ["hamming_distances", "pack_codes", "to_signed", "unpack_codes"]

Result = TypeVar("Result")

# Elements (queries x database items) handled per block: the block's uint64 scratch and int64
# ranking stay around 16 MB, so two workers fit comfortably in memory and mostly in cache.
_BLOCK_ELEMENTS = 1 << 21
# Queries ranked together inside a block: their uint64 scratch and int64 ranking fit in L2.
ROWS_PER_SORT = 4
# `nearest` selects (instead of ranking whole rows) when it wants at most this share of the database.
SELECTION_MAX_SHARE = 1 / 8


def code_bytes(n_bits: int) -> int:
    """Bytes of one packed code of `n_bits` bits (the last byte zero-padded, as numpy.packbits makes it)."""
    return (int(n_bits) + 7) // 8


def to_bits(codes: Any, name: str = "codes") -> np.ndarray:
    """Return `codes` ({-1,+1}, {0,1} or bool, shape (n, n_bits)) as a bool array, True for +1/1."""
    array = as_2d_array(codes, name, "(n, n_bits)")
    if array.shape[1] == 0:
        raise InputError(f"{name} has no bits (shape {array.shape}); n_bits must be >= 1")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(
            f"{name} must be bool, integer or float with values {{-1,+1}} or {{0,1}}; got dtype {array.dtype}"
        )
    ones = array == 1
    zeros = array == 0
    minus_ones = array == -1
    valid = ones | zeros | minus_ones
    if not valid.all():
        bad = array[~valid]
        shown = "NaN" if np.isnan(bad.astype(np.float64)).any() else repr(bad.flat[0].item())
        raise InputError(f"{name} must hold only {{-1,+1}} or {{0,1}}; found {shown} ({bad.size} bad value(s))")
    if zeros.any() and minus_ones.any():
        raise InputError(f"{name} mixes -1 and 0; codes must be all {{-1,+1}} or all {{0,1}}")
    return ones


def pack_codes(codes: Any) -> np.ndarray:
    """Pack ({-1,+1}, {0,1} or bool) codes of shape (n, n_bits) to uint8 (n, ceil(n_bits/8)), MSB first."""
    return np.packbits(to_bits(codes), axis=1)


def to_signed(codes: Any) -> np.ndarray:
    """Return codes ({0,1}, bool or {-1,+1}) as int8 {-1,+1}, the sign convention of every hasher."""
    return np.where(to_bits(codes), np.int8(1), np.int8(-1))


def unpack_codes(packed: Any, n_bits: int) -> np.ndarray:
    """Unpack uint8 codes (n, ceil(n_bits/8)) to int8 {-1,+1} of shape (n, n_bits)."""
    packed = check_packed(packed, "packed", n_bits)
    bits = np.unpackbits(packed, axis=1, count=n_bits)
    return (bits.astype(np.int8) << 1) - np.int8(1)


def check_packed(packed: Any, name: str, n_bits: int | None = None) -> np.ndarray:
    """Return `packed` as a C-contiguous uint8 (n, n_bytes) array; uint8 only, never cast."""
    array = np.asarray(packed)
    if array.dtype != np.uint8:
        raise InputError(f"{name} must be packed uint8 codes (see pack_codes); got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] == 0:
        raise InputError(f"{name} must be 2-D (n, n_bytes) with n_bytes >= 1; got shape {array.shape}")
    if n_bits is not None:
        n_bytes = code_bytes(n_bits)
        if array.shape[1] != n_bytes:
            raise InputError(f"{name} has {array.shape[1]} bytes per code; {n_bits} bits pack to {n_bytes}")
        if n_bits % 8 and np.any(array[:, -1] & np.uint8(0xFF >> (n_bits % 8))):
            raise InputError(f"{name} has non-zero padding bits beyond bit {n_bits}; pack codes with pack_codes")
    return np.ascontiguousarray(array)


def hamming_distances(query_packed: Any, database_packed: Any) -> np.ndarray:
    """Hamming distances (n_queries, n_database) between packed codes: uint16, or int32 beyond 65535 bits."""
    queries = check_packed(query_packed, "query_packed")
    database = check_packed(database_packed, "database_packed")
    if queries.shape[1] != database.shape[1]:
        raise InputError(
            f"query_packed has {queries.shape[1]} bytes per code but database_packed has {database.shape[1]}"
        )
    dtype = np.uint16 if queries.shape[1] * 8 <= np.iinfo(np.uint16).max else np.int32
    query_words, database_words = as_words(queries), database_word_planes(database)
    out = np.empty((queries.shape[0], database.shape[0]), dtype)

    def fill(start: int, stop: int) -> None:
        out[start:stop] = distance_block(query_words[start:stop], database_words, dtype)

    map_query_blocks(fill, queries.shape[0], database.shape[0])
    return out


def as_words(packed: np.ndarray) -> np.ndarray:
    """View packed codes (n, n_bytes) as uint64 words (n, ceil(n_bytes/8)), zero-padded."""
    n_words = -(-packed.shape[1] // 8)
    padded = np.zeros((packed.shape[0], n_words * 8), np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def database_word_planes(packed: np.ndarray) -> np.ndarray:
    """Database codes as uint64 word planes (n_words, n): each word a contiguous row for XOR."""
    return np.ascontiguousarray(as_words(packed).T)


def distance_dtype(n_bytes: int) -> type:
    """Smallest unsigned type that holds a distance of n_bytes*8 bits (uint8 sorts in one radix pass)."""
    if n_bytes * 8 <= np.iinfo(np.uint8).max:
        return np.uint8
    return np.uint16 if n_bytes * 8 <= np.iinfo(np.uint16).max else np.int32


def distance_block(query_words: np.ndarray, database_planes: np.ndarray, dtype: type) -> np.ndarray:
    """Hamming distances (B, n) of query words (B, W) to database planes (W, n) by XOR + popcount."""
    n_words, n_database = database_planes.shape
    out = np.empty((query_words.shape[0], n_database), dtype)
    scratch = np.empty((query_words.shape[0], n_database), np.uint64)
    for word in range(n_words):
        np.bitwise_xor(query_words[:, word, None], database_planes[word], out=scratch)
        if word == 0:
            np.bitwise_count(scratch, out=out)
        else:
            np.add(out, np.bitwise_count(scratch), out=out, casting="unsafe")
    return out


def stable_ranking(distances: np.ndarray) -> np.ndarray:
    """Database order per query (B, n) by distance, ties by database index (a radix sort for small ints)."""
    return np.argsort(distances, axis=1, kind="stable")


def nearest(
    query_words: np.ndarray, database_planes: np.ndarray, dtype: type, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `depth` nearest database items of each query: (distances int32, indices int64), ties by index."""
    distances = np.empty((query_words.shape[0], depth), np.int32)
    order = np.empty((query_words.shape[0], depth), np.int64)
    shallow = depth <= SELECTION_MAX_SHARE * database_planes.shape[1]

    def rank_block(start: int, stop: int) -> None:
        # A few rows at a time, so distances and ranking stay in cache.
        for first in range(start, stop, ROWS_PER_SORT):
            rows = slice(first, min(first + ROWS_PER_SORT, stop))
            block = distance_block(query_words[rows], database_planes, dtype)
            if shallow:
                order[rows] = [smallest_in_order(row, depth) for row in block]
            else:
                order[rows] = stable_ranking(block)[:, :depth]
            distances[rows] = np.take_along_axis(block, order[rows], axis=1)

    map_query_blocks(rank_block, query_words.shape[0], database_planes.shape[1])
    return distances, order


def smallest_in_order(row: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the `depth` smallest of a row of (integer) distances, by (distance, index).

    Selection instead of sorting: the depth-th smallest distance t is found by bisection on counts
    (a few passes of a comparison over the row), then the items below t and the first items at t are
    the answer, in index order, ranked by a stable sort of only `depth` values.
    """
    low, high = int(row.min()), int(row.max())
    while low < high:
        middle = (low + high) // 2
        if np.count_nonzero(row <= middle) >= depth:
            high = middle
        else:
            low = middle + 1
    below = np.flatnonzero(row < low)
    picked = np.concatenate([below, np.flatnonzero(row == low)[: depth - below.size]])
    return picked[np.argsort(row[picked], kind="stable")]


def map_query_blocks(
    work: Callable[[int, int], Result], n_queries: int, n_database: int
) -> list[Result]:
    """Run `work(start, stop)` over blocks of queries, in threads; results in block order."""
    block = max(1, min(n_queries, _BLOCK_ELEMENTS // max(n_database, 1)))
    starts = range(0, n_queries, block)
    workers = min(usable_cpus(), len(starts))  # numpy releases the GIL
    if workers <= 1:
        return [work(start, min(start + block, n_queries)) for start in starts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda start: work(start, min(start + block, n_queries)), starts))
