"""Iterative quantisation: PCA, then the rotation that best aligns the data with the hypercube's vertices."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from bganhash._validation import check_positive_int
from bganhash.hashers.base import Hasher, check_bits_within_pca_rank
from bganhash.hashers.pcah import principal_components


class ITQ(Hasher):
    """ITQ (Gong & Lazebnik, CVPR 2011): codes sgn(V R), V the top-n_bits PCA projection.

    Starting from a random orthogonal R, it alternates B = sgn(V R) and the orthogonal Procrustes
    solution R = argmin ||B - V R||_F, so the quantisation loss never increases.

    Parameters
    ----------
    n_bits : int
        Code length; at most min(n_samples, n_features) of the training data.
    random_state : int or None
        Seed of the initial random rotation.
    n_iter : int
        Number of B/R alternations (the paper uses 50).

    Attributes
    ----------
    mean_ : (n_features,) float32 training mean.
    components_ : (n_features, n_bits) float32 principal directions (see `PCAH`).
    rotation_ : (n_bits, n_bits) float64 learned orthogonal rotation R.
    quantization_loss_history_ : (n_iter + 1,) float64 ||sgn(VR) - VR||_F^2 at the initial R and
        after each update.
    """

    name = "itq"
    display_name = "ITQ"

    def __init__(self, n_bits: int, random_state: int | None = None, n_iter: int = 50) -> None:
        super().__init__(n_bits, random_state)
        self.n_iter = n_iter

    def _check_params(self, X: np.ndarray) -> None:
        check_bits_within_pca_rank(self.n_bits, X, type(self).__name__)
        check_positive_int(self.n_iter, "n_iter", minimum=0)

    def _fit(self, X: np.ndarray) -> None:
        rng = np.random.default_rng(self.random_state)
        mean, components, _ = principal_components(X, self.n_bits)
        V = ((X - mean) @ components).astype(np.float64)
        # Tiny (n_bits x n_bits) SVDs: BLAS threads only add synchronisation, badly so on a busy machine.
        with threadpool_limits(limits=1, user_api="blas"):
            rotation = random_rotation(self.n_bits, rng)
            projected = V @ rotation
            history = [quantization_loss(projected)]
            for _ in range(self.n_iter):
                rotation = procrustes_rotation(V, np.where(projected >= 0, 1.0, -1.0))
                projected = V @ rotation
                history.append(quantization_loss(projected))
        self.mean_, self.components_, self.rotation_ = mean, components, rotation
        self.quantization_loss_history_ = np.asarray(history)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ (self.components_ @ self.rotation_.astype(np.float32))


def random_rotation(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix: the left singular vectors of a Gaussian matrix (as the ITQ code)."""
    left, _, _ = np.linalg.svd(rng.standard_normal((size, size)))
    return left


def procrustes_rotation(V: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The orthogonal R minimising ||codes - V R||_F: from the SVD of V^T codes."""
    left, _, right_t = np.linalg.svd(V.T @ codes)
    return left @ right_t


def quantization_loss(projected: np.ndarray) -> float:
    """||sgn(P) - P||_F^2, the distance from the projections to their nearest hypercube vertices."""
    return float(np.sum((np.where(projected >= 0, 1.0, -1.0) - projected) ** 2))
