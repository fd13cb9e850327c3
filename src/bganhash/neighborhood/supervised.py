"""The supervised S (images sharing a label) and how S and K-NN lists measure against labels (Figure 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from bganhash._validation import InputError, check_features, check_positive_int
from bganhash.neighborhood.algorithm import expand_neighborhood
from bganhash.neighborhood.checks import (
    boolean_csr,
    check_knn,
    check_labels,
    check_same_rows,
    check_square_sparse,
    share_label,
)
from bganhash.neighborhood.knn import knn_cosine

_PAIR_CHUNK = 1 << 20  # (i, j) pairs compared at once in label_precision


def label_neighborhood(labels: Any) -> sp.csr_matrix:
    """Return the supervised S's positives: images sharing a class (1-D labels) or a label (2-D 0/1).

    The diagonal is positive even for an image with no label, as in the unsupervised S.
    """
    codes = check_labels(labels)
    n = codes.shape[0]
    if codes.ndim == 1:
        n_classes = int(codes.max()) + 1
        one_hot = sp.csr_matrix((np.ones(n, np.int32), codes, np.arange(n + 1)), shape=(n, n_classes))
    else:
        one_hot = sp.csr_matrix(codes.astype(np.int32))
    shared = (one_hot @ one_hot.T).tocsr()
    return boolean_csr(shared + sp.identity(n, dtype=np.int32, format="csr"))


def positives_per_image(S: Any) -> float:
    """Return the mean number of positives per row of S (its diagonal included)."""
    matrix = check_square_sparse(S)
    return float(matrix.count_nonzero() / matrix.shape[0])


def label_precision(S_or_knn: Any, labels: Any) -> float:
    """Return the fraction of positive pairs (i, j != i) whose images share a label.

    Accepts a sparse S (its diagonal is left out) or an (n, k + 1) K-NN array (each row's own index
    is left out).
    """
    codes = check_labels(labels)
    if sp.issparse(S_or_knn):
        pairs = check_square_sparse(S_or_knn).tocoo()
        n_images = pairs.shape[0]
        rows, columns = pairs.row[pairs.data != 0], pairs.col[pairs.data != 0]
    else:
        lists = check_knn(S_or_knn)
        n_images = lists.shape[0]
        rows = np.repeat(np.arange(n_images), lists.shape[1])
        columns = lists.ravel()
    check_same_rows(codes.shape[0], n_images)
    off_diagonal = rows != columns
    rows, columns = rows[off_diagonal], columns[off_diagonal]
    if rows.shape[0] == 0:
        raise InputError("label_precision needs at least one positive pair (i, j) with j != i; there is none")
    shared = sum(
        int(share_label(codes, rows[s : s + _PAIR_CHUNK], columns[s : s + _PAIR_CHUNK]).sum())
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
    check_same_rows(check_labels(labels).shape[0], features.shape[0])
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
