"""Cosine K-NN lists of the training features: exact (row panels, ties to the smaller index) or faiss IVF."""

from __future__ import annotations

from typing import Any

import numpy as np

from bganhash._progress import progress_bar
from bganhash._system import import_faiss, usable_cpus
from bganhash._validation import InputError, check_features, check_positive_int
from bganhash.neighborhood.checks import check_knn, check_same_rows

_KNN_BLOCK_ELEMENTS = 1 << 22  # similarities held per K-NN panel (about 20 bytes each at peak)
_IVF_QUERY_BLOCK = 1 << 14  # rows searched per faiss call (one progress step)
_IVF_TRAINING_PER_LIST = 64  # k-means training rows per inverted list
EXACT_KNN_MAX_ROWS = 60_000  # knn_cosine(method="auto") is exact up to here (all of CIFAR-10), faiss IVF above
DEFAULT_NPROBE = 16  # inverted lists searched per row by the IVF K-NN
KNN_METHODS = ("auto", "exact", "ivf")


def knn_cosine(features: Any, k: int, *, method: str = "auto", nprobe: int = DEFAULT_NPROBE,
               progress: bool = False) -> np.ndarray:
    """Return the (n, k + 1) int64 indices of each row's k + 1 nearest rows by cosine similarity.

    Each row's own index comes first (even beside exact duplicates), then decreasing similarity.
    `method`: "exact" (ties to the smaller index; row panels against the columns after them, as
    the similarity matrix is symmetric), "ivf" (faiss inverted lists searched `nprobe` at a time:
    approximate, for millions of rows; see `estimate_knn_recall`), or "auto": exact up to
    EXACT_KNN_MAX_ROWS rows, ivf above.
    """
    unit = _unit_rows(check_features(features, "features"))
    n = unit.shape[0]
    k = check_positive_int(k, "k", 1)
    if k >= n:
        raise InputError(f"k={k} must be smaller than the number of rows ({n}): each row needs k other rows")
    if method not in KNN_METHODS:
        raise InputError(f"method={method!r} is not one of {', '.join(KNN_METHODS)}")
    if method == "ivf" or (method == "auto" and n > EXACT_KNN_MAX_ROWS):
        return _knn_ivf(unit, k, check_positive_int(nprobe, "nprobe", 1), progress)
    rows_per_panel = max(1, _KNN_BLOCK_ELEMENTS // n)
    best = np.full((n, k + 1), np.iinfo(np.int64).max, dtype=np.int64)
    for start in range(0, n, rows_per_panel):
        stop = min(n, start + rows_per_panel)
        ordered = _ordered_distances(unit[start:stop], unit[start:])
        local = np.arange(stop - start)
        ordered[local, local] = np.iinfo(np.int32).min  # self first, even beside exact duplicates
        _merge_into(best, np.arange(start, stop), _smallest_keys(ordered, start, k + 1))
        if stop < n:  # the same similarities seen from the later rows that this panel can improve
            later = ordered[:, stop - start :]
            worst = (best[stop:, -1] >> 32).astype(np.int32)
            columns = np.flatnonzero(later.min(axis=0) <= worst)
            candidates = _smallest_keys(np.ascontiguousarray(later[:, columns].T), start, k + 1)
            _merge_into(best, stop + columns, candidates)
    return best & 0xFFFFFFFF


def estimate_knn_recall(features: Any, knn_indices: Any, n_sample: int = 1000, seed: int = 0) -> float:
    """The fraction of the exact k nearest other rows that `knn_indices` found, over a seeded sample
    of rows (exact search of the sample against every row, in column blocks)."""
    unit = _unit_rows(check_features(features, "features"))
    lists = check_knn(knn_indices)
    check_same_rows(unit.shape[0], lists.shape[0])
    n, width = lists.shape
    rows = np.sort(
        np.random.default_rng(seed).choice(n, min(n, check_positive_int(n_sample, "n_sample")), replace=False)
    )
    best = np.full((rows.shape[0], width), np.iinfo(np.int64).max, dtype=np.int64)
    columns_per_block = max(1, _KNN_BLOCK_ELEMENTS // rows.shape[0])
    for start in range(0, n, columns_per_block):
        stop = min(n, start + columns_per_block)
        ordered = _ordered_distances(unit[rows], unit[start:stop])
        inside = np.flatnonzero((rows >= start) & (rows < stop))
        ordered[inside, rows[inside] - start] = np.iinfo(np.int32).min  # self first
        _merge_into(best, np.arange(rows.shape[0]), _smallest_keys(ordered, start, width))
    exact = best & 0xFFFFFFFF
    found = sum(np.intersect1d(exact[i, 1:], lists[row, 1:]).shape[0] for i, row in enumerate(rows))
    return found / (rows.shape[0] * (width - 1))


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm, in float64 (see `_ordered_distances`); a zero row has no cosine
    similarity."""
    features = np.asarray(features, dtype=np.float64)
    peak = np.abs(features).max(axis=1)
    zero = np.flatnonzero(peak == 0)
    if zero.size:
        raise InputError(
            f"features has {zero.size} all-zero row(s) (first: row {zero[0]}); "
            "cosine similarity is undefined for them"
        )
    unit = features / peak[:, None]  # scaled first so that the squared norm cannot overflow
    unit /= np.sqrt(np.einsum("ij,ij->i", unit, unit))[:, None]
    return unit


def _knn_ivf(unit: np.ndarray, k: int, nprobe: int, progress: bool) -> np.ndarray:
    """K-NN by faiss IndexIVFFlat on inner products of unit rows (= cosine), own index put first.

    Rows are searched list by list (in the order of the inverted lists they were filed in), so that
    consecutive queries probe nearly the same lists and find them in cache.
    """
    faiss = import_faiss(f"the IVF K-NN of {unit.shape[0]} rows (method='exact' does without)")
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    faiss.omp_set_num_threads(usable_cpus())
    n, dim = unit.shape
    n_lists = int(max(1, min(round(4 * np.sqrt(n)), n // 39)))  # faiss wants 39+ training rows per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, n_lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234
    sample = np.random.default_rng(0).choice(n, min(n, _IVF_TRAINING_PER_LIST * n_lists), replace=False)
    index.train(unit[np.sort(sample)])
    index.add(unit)
    index.nprobe = min(nprobe, n_lists)
    lists = np.empty((n, k + 1), dtype=np.int64)
    with progress_bar(n, "K-NN (faiss IVF)", "rows", enabled=progress) as bar:
        order = _list_order(faiss, index)
        for start in range(0, n, _IVF_QUERY_BLOCK):
            rows = order[start : start + _IVF_QUERY_BLOCK]
            _, found = index.search(unit[rows], k + 1)
            short = _self_first(found, rows, lists)
            if short.size:  # too few candidates in the probed lists: search those rows exhaustively
                params = faiss.SearchParametersIVF(nprobe=n_lists)
                _, found = index.search(unit[short], k + 1, params=params)
                if _self_first(found, short, lists).size:
                    raise RuntimeError(f"faiss found fewer than k={k} neighbours of row {short[0]}")
            bar.update(rows.shape[0])
    return lists


def _list_order(faiss, index) -> np.ndarray:
    """Every row id, grouped by the inverted list it was filed in."""
    lists = index.invlists
    return np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                           for i in range(lists.nlist) if lists.list_size(i)]).astype(np.int64)


def _self_first(found: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Set out[rows] to each row's own index then its first k others in `found` (faiss's -1 and the
    row itself dropped); returns the rows with fewer than k others, whose lines are left unset."""
    k = out.shape[1] - 1
    others = (found != rows[:, None]) & (found >= 0)
    others &= np.cumsum(others, axis=1) <= k
    complete = others.sum(axis=1) == k
    out[rows[complete], 0] = rows[complete]
    out[rows[complete], 1:] = found[complete][others[complete]].reshape(-1, k)
    return rows[~complete]


def _ordered_distances(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """-cosine of unit rows as int32 whose integer order is the float order (no -0.0 left).

    The products are taken in float64 and then rounded to float32: a float32 product gives two identical
    rows similarities up to 1 ulp apart (BLAS sums different columns in different orders), which broke
    the tie-by-index rule on duplicates; float64's differences (about 1e-16) vanish in the rounding.
    """
    distance = (np.float64(0.0) - rows @ columns.T).astype(np.float32)
    distance += np.float32(0.0)  # -0.0 -> +0.0
    bits = distance.view(np.int32)
    flip = np.right_shift(bits, 31)  # -1 on negative floats, whose larger magnitudes must become smaller
    flip &= 0x7FFFFFFF
    bits ^= flip
    return bits


def _smallest_keys(ordered: np.ndarray, first_column: int, count: int) -> np.ndarray:
    """Each row's `count` smallest (distance, column) pairs as int64 keys distance << 32 | column.

    The keys are distinct, so ranking them needs no tie rule: equal distances go to the smaller column.
    Only the entries at or below each row's count-th smallest distance become keys.
    """
    n_rows, n_columns = ordered.shape
    if count < n_columns:
        cutoff = np.partition(ordered, count - 1, axis=1)[:, count - 1]
        flat = np.flatnonzero(ordered <= cutoff[:, None])  # much faster than 2-D np.nonzero
    else:
        flat = np.arange(n_rows * n_columns)
    rows, columns = np.divmod(flat, n_columns)
    keys = ordered[rows, columns].astype(np.int64) << 32
    keys |= columns + first_column
    width = min(count, n_columns)
    per_row = np.bincount(rows, minlength=n_rows)  # more than `width` where ties straddle the cut-off
    starts = np.cumsum(per_row) - per_row
    smallest = np.empty((n_rows, width), dtype=np.int64)
    untied = per_row == width
    smallest[untied] = np.sort(keys[starts[untied, None] + np.arange(width)], axis=1)
    for row in np.flatnonzero(~untied):
        smallest[row] = np.sort(keys[starts[row] : starts[row] + per_row[row]])[:width]
    return smallest


def _merge_into(best: np.ndarray, rows: np.ndarray, candidates: np.ndarray) -> None:
    """Keep in best[rows] (sorted keys) the smallest keys among theirs and `candidates` (sorted)."""
    improves = candidates[:, 0] < best[rows, -1]
    rows, candidates = rows[improves], candidates[improves]
    both = np.concatenate([best[rows], candidates], axis=1)
    both.sort(axis=1)
    best[rows] = both[:, : best.shape[1]]
