"""Validation of the neighbourhood's inputs (K-NN lists, labels, sparse S) with errors that name the problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from bganhash._validation import InputError


def check_knn(knn_indices: Any) -> np.ndarray:
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


def boolean_csr(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The non-zero pattern of `matrix` as a boolean csr_matrix with sorted indices."""
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()  # sorts the indices unless they are already sorted
    matrix.eliminate_zeros()
    pattern = sp.csr_matrix(
        (np.ones(matrix.nnz, dtype=bool), matrix.indices.copy(), matrix.indptr.copy()), shape=matrix.shape
    )
    pattern.has_sorted_indices = True
    return pattern


def check_labels(labels: Any) -> np.ndarray:
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


def share_label(codes: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Whether images rows[t] and columns[t] share a label, for every t."""
    if codes.ndim == 1:
        return codes[rows] == codes[columns]
    return (codes[rows] & codes[columns]).any(axis=1)


def check_square_sparse(S: Any) -> sp.csr_matrix:
    if not sp.issparse(S) or S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise InputError(f"S must be a non-empty square scipy.sparse matrix; got {type(S).__name__}")
    return sp.csr_matrix(S)


def check_same_rows(n_labels: int, n_rows: int) -> None:
    if n_labels != n_rows:
        raise InputError(f"labels has {n_labels} rows but there are {n_rows} images; they must match")
