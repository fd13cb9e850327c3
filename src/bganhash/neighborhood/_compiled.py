"""Compiled kernels of Algorithm 1's expansion (numba): overlaps, top K2, unions, symmetrisation.

Each pass is a plain loop over rows with a dense marker array of length n, so time is linear in
n·K1·K2 plus the size of S, and memory is the size of S plus the lists: never n². The rules (ties,
the zero-overlap fill-up) are documented in `bganhash.neighborhood.algorithm`; `expand_neighborhood` there is
the public entry point and checks the input.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def top_overlap(lists: np.ndarray, indptr: np.ndarray, rows: np.ndarray, k2: int) -> np.ndarray:
    """For each i, the set of k2 images j of largest |L_i ∩ L_j| (ties to the smaller j), unordered.

    Overlaps are counted through the inverted lists; the cut-off overlap is found from their
    histogram, so only the images tied at the cut-off are sorted. Where fewer than k2 images
    overlap at all, the smallest zero-overlap ones fill up the row.
    """
    n, width = lists.shape
    count = np.zeros(n, dtype=np.int32)
    touched = np.empty(n + 1, dtype=np.int64)
    tied = np.empty(n, dtype=np.int64)
    histogram = np.zeros(width + 1, dtype=np.int64)
    kept = np.empty((n, k2), dtype=np.int32)
    for i in range(n):
        n_touched = 0
        for c in range(width):
            m = lists[i, c]
            for p in range(indptr[m], indptr[m + 1]):
                j = rows[p]
                touched[n_touched] = j
                n_touched += count[j] == 0  # branch-free: j stays recorded only on its first visit
                count[j] += 1
        histogram[:] = 0
        for t in range(n_touched):
            histogram[count[touched[t]]] += 1
        cutoff, above = 0, 0  # images with overlap > cutoff: all kept
        if n_touched > k2:
            cutoff = width
            while above + histogram[cutoff] < k2:
                above += histogram[cutoff]
                cutoff -= 1
        taken, n_tied = 0, 0
        for t in range(n_touched):
            j = touched[t]
            if count[j] > cutoff:
                kept[i, taken] = j
                taken += 1
            elif count[j] == cutoff:
                tied[n_tied] = j
                n_tied += 1
        if taken < k2 and n_tied:
            smallest = np.sort(tied[:n_tied])
            for t in range(k2 - taken):
                kept[i, taken + t] = smallest[t]
            taken = k2
        j = 0
        while taken < k2:  # fewer than k2 images overlap: the smallest zero-overlap ones follow
            if count[j] == 0:
                kept[i, taken] = j
                taken += 1
            j += 1
        for t in range(n_touched):
            count[touched[t]] = 0
    return kept


@njit(cache=True)
def list_unions(lists: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, members) of L'_i, the union of the lists of the images kept for i (rows unsorted)."""
    n, width = lists.shape
    k2 = kept.shape[1]
    stamp = np.full(n, -1, dtype=np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    members = np.empty(max(16, n * width * 4), dtype=np.int32)
    filled = 0
    for i in range(n):
        if members.shape[0] - filled < width * k2:  # grow by doubling: the row may add width·k2
            grown = np.empty(2 * members.shape[0] + width * k2, dtype=np.int32)
            grown[:filled] = members[:filled]
            members = grown
        for t in range(k2):
            j = kept[i, t]
            for c in range(width):
                m = lists[j, c]
                if stamp[m] != i:
                    stamp[m] = i
                    members[filled] = m
                    filled += 1
        indptr[i + 1] = filled
    return indptr, members[:filled].copy()


@njit(cache=True)
def transpose_pattern(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The transpose of an n x n 0/1 CSR pattern by counting sort: its rows come out sorted."""
    t_indptr = np.zeros(n + 1, dtype=np.int64)
    for p in range(indices.shape[0]):
        t_indptr[indices[p] + 1] += 1
    for m in range(n):
        t_indptr[m + 1] += t_indptr[m]
    t_indices = np.empty(indices.shape[0], dtype=np.int32)
    cursor = t_indptr[:-1].copy()
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            m = indices[p]
            t_indices[cursor[m]] = i
            cursor[m] += 1
    return t_indptr, t_indices


@njit(cache=True)
def symmetric_union(indptr, indices, t_indptr, t_indices) -> tuple[np.ndarray, np.ndarray]:
    """Row by row union of a pattern and its transpose (rows unsorted): the pattern of P + Pᵀ.

    Two passes (count, then fill) so that the result is allocated at its exact size.
    """
    n = indptr.shape[0] - 1
    stamp = np.full(n, -1, dtype=np.int64)
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out_indices = np.empty(0, dtype=np.int32)
    for fill in (False, True):  # count pass, then fill pass
        if fill:
            out_indices = np.empty(out_indptr[n], dtype=np.int32)
            stamp[:] = -1
        for i in range(n):
            filled = out_indptr[i]
            for p in range(indptr[i], indptr[i + 1]):
                stamp[indices[p]] = i
                if fill:
                    out_indices[filled] = indices[p]
                filled += 1
            for p in range(t_indptr[i], t_indptr[i + 1]):
                m = t_indices[p]
                if stamp[m] != i:
                    if fill:
                        out_indices[filled] = m
                    filled += 1
            if not fill:
                out_indptr[i + 1] = filled
    return out_indptr, out_indices
