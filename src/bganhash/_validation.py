"""Input validation shared by every public entry point: clear errors that name the bad value."""

from __future__ import annotations

from typing import Any

import numpy as np


class InputError(ValueError):
    """Bad user input (a file, an array, an option); the CLI prints it as one line and exits 2."""


class NotFittedError(InputError, AttributeError):
    """An estimator was used before `fit` (mirrors scikit-learn's exception of the same name)."""


def check_fitted(estimator: Any, attribute: str) -> None:
    """Raise NotFittedError unless `estimator` has the learned `attribute` (one ending in `_`)."""
    if getattr(estimator, attribute, None) is None:
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet; call fit(X) before using it."
        )


def as_2d_array(X: Any, name: str, shape_hint: str) -> np.ndarray:
    """Return `X` as a 2-D numpy array, or raise InputError naming `name` and the shape it has."""
    try:
        array = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name} cannot be read as an array: {exc}") from exc
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D {shape_hint}; got {array.ndim}-D shape {array.shape}")
    return array


MAX_FEATURE_MAGNITUDE = 1e12  # beyond it, float32 sums of squares (covariances, distances) overflow


def check_features(X: Any, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return `X` as a finite float32 (n, d) array of real values within +-MAX_FEATURE_MAGNITUDE, or raise
    InputError naming what is wrong."""
    array = as_2d_array(X, name, "(n_samples, n_features)")
    if array.shape[0] == 0:
        raise InputError(f"{name} has no rows (shape {array.shape})")
    if np.iscomplexobj(array):
        raise InputError(f"{name} must be real; got complex dtype {array.dtype} (pass the magnitude or the real part)")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputError(f"{name} must be numeric; got dtype {array.dtype}")
    given = array
    with np.errstate(over="ignore"):  # float64 beyond float32's range: reported below as too large
        array = array.astype(np.float32, copy=False)
    usable = np.abs(array) <= MAX_FEATURE_MAGNITUDE  # False for NaN and infinities too
    if not usable.all():
        bad_rows = ~usable.all(axis=1)
        if not np.isfinite(given).all():
            bad = int((~np.isfinite(given)).any(axis=1).sum())
            raise InputError(f"{name} contains NaN or infinite values in {bad} row(s)")
        largest = float(np.abs(given[bad_rows].astype(np.float64)).max())
        raise InputError(f"{name} has values as large as {largest:.3g} in {int(bad_rows.sum())} row(s); features "
                         f"must lie within +-{MAX_FEATURE_MAGNITUDE:.0e} (scale them down)")
    if n_features is not None and array.shape[1] != n_features:
        raise InputError(f"{name} has {array.shape[1]} features, but this model was fitted on {n_features}")
    return array


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return `value` as an int >= `minimum`, or raise InputError echoing the value and the rule."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise InputError(f"{name}={value} must be >= {minimum}")
    return int(value)


def check_image_list(images: Any) -> list[np.ndarray]:
    """`images` as a non-empty list of (H, W, 3) uint8 arrays (sizes may differ), or InputError saying what is wrong."""
    images = list(images)
    if not images:
        raise InputError("no images to encode")
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            shape = getattr(image, "shape", None)
            raise InputError(f"images must be uint8 arrays of shape (H, W, 3); got {type(image).__name__} {shape}")
    return images
