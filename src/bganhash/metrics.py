"""Retrieval metrics under Hamming ranking: mAP (@all and @K), precision@K, precision-recall by radius.

Pure, shape-checked functions. Codes are unpacked ({-1,+1}, {0,1} or bool, shape (n, n_bits)).
Labels are 1-D integers (single label: relevant when equal) or 2-D 0/1 (multi-label: relevant when
at least one label is shared). The ranking sorts the database by Hamming distance to each query and
breaks ties by database order (index), deterministically.

All of them share one machinery: per block of queries, popcount distances, a stable radix argsort of
the small-integer distances, and the relevance of the ranked items; blocks run on all cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bganhash._validation import InputError, check_positive_int
from bganhash.codes import (
    ROWS_PER_SORT,
    as_words,
    database_word_planes,
    distance_block,
    distance_dtype,
    map_query_blocks,
    nearest,
    stable_ranking,
    to_bits,
)

__all__ = [
    "average_precisions",
    "hamming_ranking",
    "mean_average_precision",
    "precision_at_k",
    "precision_at_k_curve",
    "precision_recall_curve",
]


@dataclass(frozen=True)
class _Problem:
    """Validated retrieval problem: packed codes as words, and labels in a compact form."""

    query_words: np.ndarray  # (n_queries, n_words) uint64
    database_planes: np.ndarray  # (n_words, n_database) uint64
    n_bits: int
    distance_dtype: type
    query_labels: np.ndarray  # 1-D small ints, or 2-D float32 0/1
    database_labels: np.ndarray  # 1-D small ints, or 2-D float32 0/1 transposed (n_labels, n_database)
    multi_label: bool

    @property
    def n_queries(self) -> int:
        return self.query_words.shape[0]

    @property
    def n_database(self) -> int:
        return self.database_planes.shape[1]

    def distances(self, start: int, stop: int) -> np.ndarray:
        """Hamming distances (stop-start, n_database) of a block of queries."""
        return distance_block(self.query_words[start:stop], self.database_planes, self.distance_dtype)

    def relevance(self, start: int, stop: int, order: np.ndarray | None = None) -> np.ndarray:
        """Relevance (bool) of the database items to a block of queries, in `order` or database order."""
        if not self.multi_label:
            items = self.database_labels if order is None else np.take(self.database_labels, order)
            return items == self.query_labels[start:stop, None]
        shared = self.query_labels[start:stop] @ self.database_labels
        relevant = shared > 0
        return relevant if order is None else np.take_along_axis(relevant, order, axis=1)

    def reduce_ranked(
        self, start: int, stop: int, depth: int, reduce: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """`reduce` applied to the ranked relevance (rows, depth) of a block of queries, rows stacked.

        The relevance holds, for each query, whether each of its `depth` nearest items (ties by
        database index) is relevant. A few rows at a time, so each ranking and its relevance stay
        in cache from the distances to the reduction.
        """
        parts = []
        for first in range(start, stop, ROWS_PER_SORT):
            last = min(first + ROWS_PER_SORT, stop)
            order = stable_ranking(self.distances(first, last))[:, :depth]
            parts.append(reduce(self.relevance(first, last, order)))
        return np.concatenate(parts)


def hamming_ranking(
    query_codes: Any, database_codes: Any, top_k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the database for each query: (distances int32, database indices int64), both (n_queries, K).

    K is `top_k`, or the whole database when None. Ties in distance are broken by database index.
    """
    queries, database, _ = _check_code_pair(query_codes, database_codes)
    depth = _check_depth(top_k, database.shape[0], "top_k")
    return nearest(as_words(queries), database_word_planes(database), distance_dtype(database.shape[1]), depth)


def average_precisions(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    top_k: int | None = None,
) -> np.ndarray:
    """Average precision of each query (n_queries,) over its top `top_k` results (all when None).

    AP@k = (1 / R_k) * sum_{i <= k, item i relevant} precision@i, where R_k is the number of
    relevant items among the top k (the hashing literature's AP@k); with k = all, R_k is the number
    of relevant items in the database. A query with no relevant item in its top k gets AP 0.
    """
    problem = _check_problem(query_codes, database_codes, query_labels, database_labels)
    depth = _check_depth(top_k, problem.n_database, "top_k")

    def block_ap(start: int, stop: int) -> np.ndarray:
        return problem.reduce_ranked(start, stop, depth, _average_precision_rows)

    return _concatenate(map_query_blocks(block_ap, problem.n_queries, problem.n_database))


def mean_average_precision(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    top_k: int | None = None,
) -> float:
    """mAP: the mean over queries of `average_precisions` (mAP@all when `top_k` is None).

    AP@k = (1 / R_k) * sum_{i <= k, item i relevant} precision@i, R_k = relevant items in the top k
    (all relevant items for mAP@all); a query with no relevant item counts as AP 0. Ranking by
    Hamming distance, ties broken by database order.
    """
    return float(np.mean(average_precisions(query_codes, database_codes, query_labels, database_labels, top_k)))


def precision_at_k_curve(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    ks: Sequence[int],
) -> np.ndarray:
    """Mean precision@K over queries at each K in `ks` (float64, len(ks)): relevant in the top K, over K."""
    problem = _check_problem(query_codes, database_codes, query_labels, database_labels)
    ks_array = np.asarray([_check_depth(k, problem.n_database, "k") for k in ks], dtype=np.int64)
    if ks_array.size == 0:
        raise InputError("ks must name at least one K")
    depth = int(ks_array.max())

    def block_hits(start: int, stop: int) -> np.ndarray:
        return problem.reduce_ranked(start, stop, depth, lambda relevant: _hits_at(relevant, ks_array))

    hits = np.concatenate(map_query_blocks(block_hits, problem.n_queries, problem.n_database))
    return (hits / ks_array).mean(axis=0)


def precision_at_k(
    query_codes: Any, database_codes: Any, query_labels: Any, database_labels: Any, k: int
) -> float:
    """Mean precision@k over queries: the fraction of relevant items among each query's top k."""
    return float(precision_at_k_curve(query_codes, database_codes, query_labels, database_labels, [k])[0])


def precision_recall_curve(
    query_codes: Any, database_codes: Any, query_labels: Any, database_labels: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall (each float64, n_bits + 1) of Hamming-radius retrieval, r = 0..n_bits.

    At radius r a query retrieves every item at distance <= r. Per query, precision = relevant
    retrieved / retrieved and recall = relevant retrieved / relevant; a zero denominator (nothing
    retrieved, or no relevant item) gives 0, as in the hash-lookup convention. Both are averaged
    over all queries.
    """
    problem = _check_problem(query_codes, database_codes, query_labels, database_labels)
    n_radii = problem.n_bits + 1

    def block_curves(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        distances = problem.distances(start, stop)
        relevant = problem.relevance(start, stop)
        rows = np.broadcast_to(np.arange(stop - start)[:, None] * n_radii, distances.shape)
        cells = (rows + distances).ravel()
        size = (stop - start) * n_radii
        retrieved = np.bincount(cells, minlength=size).reshape(-1, n_radii).cumsum(axis=1)
        hits = np.bincount(cells[relevant.ravel()], minlength=size).reshape(-1, n_radii).cumsum(axis=1)
        precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
        totals = hits[:, -1:]
        recall = np.divide(hits, totals, out=np.zeros(hits.shape), where=totals > 0)
        return precision.sum(axis=0), recall.sum(axis=0)

    parts = map_query_blocks(block_curves, problem.n_queries, problem.n_database)
    precision = np.sum([p for p, _ in parts], axis=0) / problem.n_queries
    recall = np.sum([r for _, r in parts], axis=0) / problem.n_queries
    return precision, recall


def _average_precision_rows(relevant: np.ndarray) -> np.ndarray:
    """AP of each row of ranked relevance (B, K): mean of precision at each hit, 0 for no hit."""
    n_rows, depth = relevant.shape
    flat_hits = np.flatnonzero(relevant)
    rows = flat_hits // depth
    hits_per_row = np.bincount(rows, minlength=n_rows)
    first_hit = np.cumsum(hits_per_row) - hits_per_row
    rank = flat_hits - rows * depth + 1
    hit_number = np.arange(1, flat_hits.size + 1) - first_hit[rows]
    sums = np.zeros(n_rows)
    has_hits = hits_per_row > 0
    if flat_hits.size:
        sums[has_hits] = np.add.reduceat(hit_number / rank, first_hit[has_hits])
    return np.divide(sums, hits_per_row, out=np.zeros(n_rows), where=has_hits)


def _hits_at(relevant: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Number of relevant items among the top k of each row (rows, len(ks))."""
    return np.cumsum(relevant, axis=1, dtype=np.int64)[:, ks - 1]


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _check_depth(k: int | None, n_database: int, name: str) -> int:
    """A ranking depth: `k` itself (1..n_database), or the whole database when None."""
    if k is None:
        return n_database
    k = check_positive_int(k, name)
    if k > n_database:
        raise InputError(f"{name}={k} exceeds the database size {n_database}")
    return k


def _check_code_pair(query_codes: Any, database_codes: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Packed query and database codes of equal length, and that length in bits."""
    queries = to_bits(query_codes, "query_codes")
    database = to_bits(database_codes, "database_codes")
    if queries.shape[1] != database.shape[1]:
        raise InputError(f"query_codes have {queries.shape[1]} bits but database_codes have {database.shape[1]}")
    if queries.shape[0] == 0 or database.shape[0] == 0:
        raise InputError(
            f"need at least one query and one database item; got {queries.shape[0]} and {database.shape[0]}"
        )
    return np.packbits(queries, axis=1), np.packbits(database, axis=1), queries.shape[1]


def _check_problem(query_codes: Any, database_codes: Any, query_labels: Any, database_labels: Any) -> _Problem:
    """Validate codes and labels together (counts, label kinds and widths must agree)."""
    queries, database, n_bits = _check_code_pair(query_codes, database_codes)
    q_labels = _check_labels(query_labels, queries.shape[0], "query_labels")
    db_labels = _check_labels(database_labels, database.shape[0], "database_labels")
    if q_labels.ndim != db_labels.ndim:
        raise InputError(
            f"query_labels are {q_labels.ndim}-D but database_labels are {db_labels.ndim}-D; "
            "use 1-D class ids for both or 2-D 0/1 label matrices for both"
        )
    if q_labels.ndim == 2:
        if q_labels.shape[1] != db_labels.shape[1]:
            raise InputError(
                f"query_labels have {q_labels.shape[1]} labels but database_labels have {db_labels.shape[1]}"
            )
        q_labels, db_labels = q_labels.astype(np.float32), np.ascontiguousarray(db_labels.astype(np.float32).T)
    else:
        q_labels, db_labels = _compact_classes(q_labels, db_labels)
    return _Problem(
        query_words=as_words(queries),
        database_planes=database_word_planes(database),
        n_bits=n_bits,
        distance_dtype=distance_dtype(database.shape[1]),
        query_labels=q_labels,
        database_labels=db_labels,
        multi_label=q_labels.ndim == 2,
    )


def _check_labels(labels: Any, n: int, name: str) -> np.ndarray:
    """1-D integer class ids or a 2-D 0/1 label matrix, with one row per code."""
    array = np.asarray(labels)
    if array.ndim not in (1, 2):
        raise InputError(f"{name} must be 1-D class ids or a 2-D 0/1 label matrix; got shape {array.shape}")
    if array.shape[0] != n:
        raise InputError(f"{name} has {array.shape[0]} rows but there are {n} codes")
    if array.ndim == 1:
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{name} (1-D) must hold integer class ids; got dtype {array.dtype}")
        return array
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise InputError(f"{name} (2-D) must hold only 0/1; found {np.unique(array[~np.isin(array, (0, 1))])[:5]}")
    return array.astype(bool)


def _compact_classes(query_labels: np.ndarray, database_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber class ids to 0..C-1 in the smallest dtype, so gathering them is cheap."""
    classes, inverse = np.unique(np.concatenate([query_labels, database_labels]), return_inverse=True)
    dtype = np.min_scalar_type(max(len(classes) - 1, 0))
    inverse = inverse.astype(dtype)
    return inverse[: len(query_labels)], inverse[len(query_labels) :]
