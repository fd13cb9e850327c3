"""Neighbourhood structure S of the training images: the paper's Algorithm 1, and a supervised variant.

S is returned as a boolean, symmetric `scipy.sparse.csr_matrix` of its positives (S_ij = +1 where
stored, -1 everywhere else), because a dense N x N matrix does not fit beyond small N. Conventions:

- L_i, the K1 + 1 nearest training images of i by cosine similarity, holds i itself, first; ties in
  similarity go to the smaller index.
- Algorithm 1 counts |L_i ∩ L_j| for every j (i included; zero overlaps included), keeps the K2 images
  j of largest overlap, ties to the smaller index, and sets L'_i to the union of their lists;
  S_ij = S_ji = +1 for j in L'_i. Where fewer than K2 images overlap L_i at all (K1 small against
  K2), this literal rule, like the authors' script, fills up with the smallest-index images of zero
  overlap.
- The diagonal of S is always positive: the first image kept for i has the largest overlap, K1 + 1,
  so its list equals L_i and holds i. The supervised S is given a positive diagonal as well.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from bganhash._validation import InputError, check_features, check_positive_int

__all__ = [
    "estimate_knn_recall",
    "expand_neighborhood",
    "knn_cosine",
    "knn_label_precision_curve",
    "label_neighborhood",
    "label_precision",
    "neighborhood_structure",
    "positives_per_image",
]

_KNN_BLOCK_ELEMENTS = 1 << 22  # similarities held per K-NN panel (about 20 bytes each at peak)
_PAIR_CHUNK = 1 << 20  # (i, j) pairs compared at once in label_precision
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
    lists = _check_knn(knn_indices)
    _check_same_rows(unit.shape[0], lists.shape[0])
    n, width = lists.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, check_positive_int(n_sample, "n_sample")), replace=False))
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


def expand_neighborhood(knn_indices: Any, k2: int = 30) -> sp.csr_matrix:
    """Return S's positives (boolean, symmetric csr) from (n, K1 + 1) K-NN lists by Algorithm 1.

    Compiled row loops (`bganhash.neighborhood._compiled`): overlaps through the inverted lists (the sparse
    product A·Aᵀ, one row at a time), the top K2 per row, the unions L'_i, their union with their
    transpose, and a counting-sort transpose that sorts the rows (S is symmetric). Memory stays
    proportional to n·K1·K2 (the size of S), never n². A k2 larger than n keeps every image.
    """
    from bganhash.neighborhood import _compiled as _expansion

    lists = _check_knn(knn_indices).astype(np.int32)
    k2 = check_positive_int(k2, "k2", 1)
    n, width = lists.shape
    list_rows = np.arange(0, n * width + 1, width, dtype=np.int64)
    inverted = _expansion.transpose_pattern(list_rows, lists.ravel(), n)  # the images whose list holds m
    kept = _expansion.top_overlap(lists, *inverted, min(k2, n))
    del inverted
    unions = _expansion.list_unions(lists, kept)
    del kept
    unsorted = _expansion.symmetric_union(*unions, *_expansion.transpose_pattern(*unions, n))
    del unions
    indptr, indices = _expansion.transpose_pattern(*unsorted, n)  # S is symmetric: its transpose is S, rows sorted
    del unsorted
    if indices.shape[0] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    else:
        indices = indices.astype(np.int64)
    pattern = sp.csr_matrix((np.ones(indices.shape[0], dtype=bool), indices, indptr), shape=(n, n), copy=False)
    pattern.has_sorted_indices = True
    return pattern


def neighborhood_structure(features: Any, k1: int = 20, k2: int = 30, *, knn_method: str = "auto",
                           nprobe: int = DEFAULT_NPROBE, progress: bool = False) -> sp.csr_matrix:
    """Return S's positives for `features` by Algorithm 1: cosine K1-NN lists, then the K2 expansion."""
    return expand_neighborhood(knn_cosine(features, k1, method=knn_method, nprobe=nprobe, progress=progress), k2)


def label_neighborhood(labels: Any) -> sp.csr_matrix:
    """Return the supervised S's positives: images sharing a class (1-D labels) or a label (2-D 0/1).

    The diagonal is positive even for an image with no label, as in the unsupervised S.
    """
    codes = _check_labels(labels)
    n = codes.shape[0]
    if codes.ndim == 1:
        n_classes = int(codes.max()) + 1
        one_hot = sp.csr_matrix((np.ones(n, np.int32), codes, np.arange(n + 1)), shape=(n, n_classes))
    else:
        one_hot = sp.csr_matrix(codes.astype(np.int32))
    shared = (one_hot @ one_hot.T).tocsr()
    return _boolean_csr(shared + sp.identity(n, dtype=np.int32, format="csr"))


def positives_per_image(S: Any) -> float:
    """Return the mean number of positives per row of S (its diagonal included)."""
    matrix = _check_square_sparse(S)
    return float(matrix.count_nonzero() / matrix.shape[0])


def label_precision(S_or_knn: Any, labels: Any) -> float:
    """Return the fraction of positive pairs (i, j != i) whose images share a label.

    Accepts a sparse S (its diagonal is left out) or an (n, k + 1) K-NN array (each row's own index
    is left out).
    """
    codes = _check_labels(labels)
    if sp.issparse(S_or_knn):
        pairs = _check_square_sparse(S_or_knn).tocoo()
        n_images = pairs.shape[0]
        rows, columns = pairs.row[pairs.data != 0], pairs.col[pairs.data != 0]
    else:
        lists = _check_knn(S_or_knn)
        n_images = lists.shape[0]
        rows = np.repeat(np.arange(n_images), lists.shape[1])
        columns = lists.ravel()
    _check_same_rows(codes.shape[0], n_images)
    off_diagonal = rows != columns
    rows, columns = rows[off_diagonal], columns[off_diagonal]
    if rows.shape[0] == 0:
        raise InputError("label_precision needs at least one positive pair (i, j) with j != i; there is none")
    shared = sum(
        int(_share_label(codes, rows[s : s + _PAIR_CHUNK], columns[s : s + _PAIR_CHUNK]).sum())
        for s in range(0, rows.shape[0], _PAIR_CHUNK)
    )
    return shared / rows.shape[0]


def knn_label_precision_curve(
    features: Any, labels: Any, k1_values: Sequence[int], k2: int = 30
) -> dict[str, Any]:
    """Label precision of plain K1-NN lists and of their Algorithm-1 expansion, for each K1 (Figure 2).

    One K-NN search at the largest K1 serves every K1: its first K1 + 1 columns are the K1-NN lists.
    """
    k1_list = [check_positive_int(k1, "k1", 1) for k1 in k1_values]
    if not k1_list:
        raise InputError("k1_values is empty; give at least one K1")
    k2 = check_positive_int(k2, "k2", 1)
    features = check_features(features, "features")
    _check_same_rows(_check_labels(labels).shape[0], features.shape[0])
    knn = knn_cosine(features, max(k1_list))
    curve: dict[str, Any] = {
        "k1": k1_list, "k2": k2, "knn_precision": [], "expanded_precision": [], "positives_per_image": []
    }  # fmt: skip
    for k1 in k1_list:
        lists = knn[:, : k1 + 1]
        S = expand_neighborhood(lists, k2)
        curve["knn_precision"].append(label_precision(lists, labels))
        curve["expanded_precision"].append(label_precision(S, labels))
        curve["positives_per_image"].append(positives_per_image(S))
    return curve


# --- K-NN ------------------------------------------------------------------------------------------


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm (float32); a zero row has no cosine similarity."""
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
    from tqdm.auto import tqdm

    from bganhash._system import import_faiss, usable_cpus

    faiss = import_faiss(f"the IVF K-NN of {unit.shape[0]} rows (method='exact' does without)")
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
    with tqdm(total=n, desc="K-NN (faiss IVF)", unit="rows", disable=not progress, file=sys.stderr) as bar:
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
    """-cosine of unit rows as int32 whose integer order is the float order (no -0.0 left)."""
    distance = rows @ columns.T
    np.subtract(np.float32(0.0), distance, out=distance)
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


# --- Algorithm 1 -----------------------------------------------------------------------------------


def _check_knn(knn_indices: Any) -> np.ndarray:
    """Return K-NN lists as int64 (n, m), checked: in range, no repeats in a row, row i starting with i."""
    lists = np.asarray(knn_indices)
    if lists.ndim != 2 or lists.shape[0] == 0 or lists.shape[1] == 0:
        raise InputError(f"knn_indices must be a non-empty 2-D (n, K1 + 1) array; got shape {lists.shape}")
    if not np.issubdtype(lists.dtype, np.integer):
        raise InputError(f"knn_indices must hold integer indices; got dtype {lists.dtype}")
    n = lists.shape[0]
    lists = lists.astype(np.int64, copy=False)
    if lists.min() < 0 or lists.max() >= n:
        raise InputError(f"knn_indices must lie in [0, {n}) for {n} rows; got [{lists.min()}, {lists.max()}]")
    not_self = np.flatnonzero(lists[:, 0] != np.arange(n))
    if not_self.size:
        row = not_self[0]
        raise InputError(f"row {row} of knn_indices must start with its own index {row}; got {lists[row, 0]}")
    ordered = np.sort(lists, axis=1)
    repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if repeated.size:
        raise InputError(f"knn_indices repeats an index within {repeated.size} row(s) (first: row {repeated[0]})")
    return lists


def _boolean_csr(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The non-zero pattern of `matrix` as a boolean csr_matrix with sorted indices."""
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()  # sorts the indices unless they are already sorted
    matrix.eliminate_zeros()
    pattern = sp.csr_matrix(
        (np.ones(matrix.nnz, dtype=bool), matrix.indices.copy(), matrix.indptr.copy()), shape=matrix.shape
    )
    pattern.has_sorted_indices = True
    return pattern


# --- labels ----------------------------------------------------------------------------------------


def _check_labels(labels: Any) -> np.ndarray:
    """Return class codes 0..c-1 (1-D labels) or a boolean (n, c) label matrix (2-D 0/1 labels)."""
    array = np.asarray(labels)
    if array.ndim not in (1, 2) or array.shape[0] == 0:
        raise InputError(f"labels must be a non-empty 1-D class array or 2-D 0/1 matrix; got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("labels contain NaN or infinite values")
    if array.ndim == 1:
        return np.unique(array, return_inverse=True)[1].astype(np.int64)
    if not np.isin(array, (0, 1)).all():
        raise InputError("2-D labels must be a 0/1 (multi-hot) matrix; found other values")
    return array.astype(bool)


def _share_label(codes: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Whether images rows[t] and columns[t] share a label, for every t."""
    if codes.ndim == 1:
        return codes[rows] == codes[columns]
    return (codes[rows] & codes[columns]).any(axis=1)


def _check_square_sparse(S: Any) -> sp.csr_matrix:
    if not sp.issparse(S) or S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise InputError(f"S must be a non-empty square scipy.sparse matrix; got {type(S).__name__}")
    return sp.csr_matrix(S)


def _check_same_rows(n_labels: int, n_rows: int) -> None:
    if n_labels != n_rows:
        raise InputError(f"labels has {n_labels} rows but there are {n_rows} images; they must match")
