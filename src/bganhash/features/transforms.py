"""Feature transforms before the cosine K-NN and the hash head: none, L2, signed sqrt + L2 + centre."""

from __future__ import annotations

import numpy as np

from bganhash._validation import InputError, check_features

TRANSFORMS = ("none", "l2", "sqrt_l2_center")


def transform_features(X: np.ndarray, method: str = "none", center: np.ndarray | None = None) -> np.ndarray:
    """Feature transform before the cosine K-NN: "none", "l2" (unit rows), or "sqrt_l2_center".

    "sqrt_l2_center": signed square root, L2-normalise each row, subtract a centre: `center` when
    given (the training centre from `transform_center`, so new rows are transformed like the training
    rows), else the mean transformed row of X itself.
    """
    if method not in TRANSFORMS:
        raise InputError(f"method={method!r} must be one of {', '.join(TRANSFORMS)}")
    rows = _scaled_rows(check_features(X), method)
    if method != "sqrt_l2_center":
        return rows
    if center is None:
        center = rows.mean(axis=0, dtype=np.float64)
    return (rows - center).astype(np.float32, copy=False)


def transform_center(X: np.ndarray, method: str) -> np.ndarray | None:
    """The centre that `method` subtracts, measured on training features X (None if it does not centre)."""
    if method != "sqrt_l2_center":
        return None
    return _scaled_rows(check_features(X), method).mean(axis=0, dtype=np.float64).astype(np.float32)


def _scaled_rows(X: np.ndarray, method: str) -> np.ndarray:
    """Signed square root (for "sqrt_l2_center"), then unit rows (for "l2" and "sqrt_l2_center")."""
    if method == "none":
        return X
    if method == "sqrt_l2_center":
        X = np.sign(X) * np.sqrt(np.abs(X))
    return _l2_normalise(X).astype(np.float32, copy=False)


def _l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(np.float32).tiny)
