"""Locality-sensitive hashing: signs of Gaussian random projections of centred features."""

from __future__ import annotations

import numpy as np

from bganhash.hashers.base import Hasher


class LSH(Hasher):
    """Random-hyperplane LSH (Charikar 2002) on features centred by their training mean.

    Parameters
    ----------
    n_bits : int
        Code length.
    random_state : int or None
        Seed of the Gaussian projection matrix.

    Attributes
    ----------
    mean_ : (n_features,) float32 training mean.
    projection_ : (n_features, n_bits) float32 Gaussian projection matrix.
    """

    name = "lsh"
    display_name = "LSH"

    def _fit(self, X: np.ndarray) -> None:
        rng = np.random.default_rng(self.random_state)
        self.mean_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.projection_ = rng.standard_normal((X.shape[1], self.n_bits)).astype(np.float32)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.projection_

