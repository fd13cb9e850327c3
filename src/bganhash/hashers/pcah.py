"""PCA hashing: signs of the top principal components of centred features."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from bganhash.hashers.base import Hasher, check_bits_within_pca_rank


class PCAH(Hasher):
    """PCA hashing (Wang, Kumar & Chang 2010): bit k is the sign of the k-th principal component.

    Parameters
    ----------
    n_bits : int
        Code length; at most min(n_samples, n_features) of the training data.
    random_state : int or None
        Accepted for a uniform interface; PCAH is deterministic.

    Attributes
    ----------
    mean_ : (n_features,) float32 training mean.
    components_ : (n_features, n_bits) float32 principal directions, by decreasing variance, each
        signed so that its entry of largest magnitude is positive.
    explained_variance_ : (n_bits,) float64 variance along each direction.
    """

    name = "pcah"
    display_name = "PCAH"

    def _check_params(self, X: np.ndarray) -> None:
        check_bits_within_pca_rank(self.n_bits, X, type(self).__name__)

    def _fit(self, X: np.ndarray) -> None:
        self.mean_, self.components_, self.explained_variance_ = principal_components(X, self.n_bits)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.components_


def principal_components(X: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top principal directions (d, k) and their variances, from the covariance's eigenvectors.

    Directions come by decreasing variance, signed so their largest-magnitude entry is positive
    (scikit-learn's convention), which makes the result independent of the LAPACK build's choice.
    """
    n_samples, n_features = X.shape
    mean = X.mean(axis=0, dtype=np.float64)
    centered = X - mean.astype(np.float32)
    covariance = (centered.T @ centered).astype(np.float64) / max(n_samples - 1, 1)
    eigenvalues, eigenvectors = scipy.linalg.eigh(
        covariance, subset_by_index=[n_features - n_components, n_features - 1]
    )
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    largest = np.argmax(np.abs(eigenvectors), axis=0)
    eigenvectors *= np.sign(eigenvectors[largest, np.arange(n_components)])
    return mean.astype(np.float32), eigenvectors.astype(np.float32), np.maximum(eigenvalues, 0.0)
