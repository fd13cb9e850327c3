"""Spectral hashing: the smallest-eigenvalue Laplacian eigenfunctions of a box fitted to the PCA data."""

from __future__ import annotations

import numpy as np

from bganhash.hashers.base import Hasher
from bganhash.hashers.pcah import principal_components

_BOX_MARGIN = np.finfo(np.float64).eps  # the reference code's `eps`, keeping every box side positive


class SH(Hasher):
    """Spectral Hashing (Weiss, Torralba & Fergus, NIPS 2008), following the authors' MATLAB code.

    The data are projected on min(n_bits, n_features) principal directions and approximated by a
    uniform distribution on the box [mn, mx]. Each bit is a 1-D eigenfunction
    sgn(sin(pi/2 + k pi (x_d - mn_d) / (mx_d - mn_d))) on one PCA dimension d; the n_bits modes
    (d, k) with the smallest eigenvalues (k / (mx_d - mn_d))^2 are kept, the trivial k = 0 excluded.

    Parameters
    ----------
    n_bits : int
        Code length.
    random_state : int or None
        Accepted for a uniform interface; SH is deterministic.

    Attributes
    ----------
    components_ : (n_features, n_pca) float32 principal directions (see `PCAH`); the data are
        projected without centring, as in the reference code (the box offset absorbs the mean).
    min_, max_ : (n_pca,) float64 box bounds of the projected training data.
    modes_ : (n_bits, n_pca) int64; row i holds the frequency k of bit i in its one non-zero column.
    """

    name = "sh"
    display_name = "SH"

    def _fit(self, X: np.ndarray) -> None:
        n_pca = min(self.n_bits, X.shape[1], X.shape[0])
        _, components, _ = principal_components(X, n_pca)
        projected = (X @ components).astype(np.float64)
        self.components_ = components
        self.min_ = projected.min(axis=0) - _BOX_MARGIN
        self.max_ = projected.max(axis=0) + _BOX_MARGIN
        self.modes_ = smallest_modes(self.max_ - self.min_, self.n_bits)

    def _project(self, X: np.ndarray) -> np.ndarray:
        dims = np.argmax(self.modes_ != 0, axis=1)
        frequencies = self.modes_[np.arange(self.n_bits), dims]
        omegas = frequencies * np.pi / (self.max_ - self.min_)[dims]
        offsets = (X @ self.components_)[:, dims] - self.min_[dims]
        return np.sin(np.pi / 2 + offsets * omegas)


def smallest_modes(ranges: np.ndarray, n_bits: int) -> np.ndarray:
    """The n_bits non-trivial 1-D modes of smallest eigenvalue, as an (n_bits, n_dims) frequency matrix.

    Dimension d offers frequencies 1 .. ceil((n_bits + 1) R_d / max R) - 1 (the reference's
    enumeration); modes are ordered by (k / R_d)^2, ties by dimension then frequency.
    """
    max_modes = np.ceil((n_bits + 1) * ranges / ranges.max()).astype(np.int64)
    dims = np.concatenate([np.full(count - 1, d) for d, count in enumerate(max_modes)])
    frequencies = np.concatenate([np.arange(1, count) for count in max_modes])
    eigenvalues = (frequencies * np.pi / ranges[dims]) ** 2
    chosen = np.argsort(eigenvalues, kind="stable")[:n_bits]
    modes = np.zeros((n_bits, ranges.size), dtype=np.int64)
    modes[np.arange(n_bits), dims[chosen]] = frequencies[chosen]
    return modes
