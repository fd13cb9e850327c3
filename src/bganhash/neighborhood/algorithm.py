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

from typing import Any

import numpy as np
import scipy.sparse as sp

from bganhash._validation import check_positive_int
from bganhash.neighborhood import _compiled
from bganhash.neighborhood.checks import check_knn
from bganhash.neighborhood.knn import DEFAULT_NPROBE, knn_cosine


def expand_neighborhood(knn_indices: Any, k2: int = 30) -> sp.csr_matrix:
    """Return S's positives (boolean, symmetric csr) from (n, K1 + 1) K-NN lists by Algorithm 1.

    Compiled row loops (`bganhash.neighborhood._compiled`): overlaps through the inverted lists (the sparse
    product A·Aᵀ, one row at a time), the top K2 per row, the unions L'_i, their union with their
    transpose, and a counting-sort transpose that sorts the rows (S is symmetric). Memory stays
    proportional to n·K1·K2 (the size of S), never n². A k2 larger than n keeps every image.
    """
    lists = check_knn(knn_indices).astype(np.int32)
    k2 = check_positive_int(k2, "k2", 1)
    n, width = lists.shape
    list_rows = np.arange(0, n * width + 1, width, dtype=np.int64)
    inverted = _compiled.transpose_pattern(list_rows, lists.ravel(), n)  # the images whose list holds m
    kept = _compiled.top_overlap(lists, *inverted, min(k2, n))
    del inverted
    unions = _compiled.list_unions(lists, kept)
    del kept
    unsorted = _compiled.symmetric_union(*unions, *_compiled.transpose_pattern(*unions, n))
    del unions
    indptr, indices = _compiled.transpose_pattern(*unsorted, n)  # S is symmetric: its transpose is S, rows sorted
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
