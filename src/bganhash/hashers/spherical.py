"""Spherical hashing: each bit says whether a point lies inside one of n_bits balanced hyperspheres."""

from __future__ import annotations

import numpy as np

from bganhash._validation import InputError, check_positive_int
from bganhash.hashers.base import Hasher, check_positive_float

_POINTS_PER_INITIAL_PIVOT = 5  # each pivot starts at the mean of this many random points, as Heo's code


class SphericalHashing(Hasher):
    """Spherical Hashing (Heo et al., CVPR 2012): bit i is +1 inside the sphere (pivot_i, radius_i).

    Pivots start at means of random training points and move under pairwise forces until every
    sphere holds half the training points (radius = median distance) and each pair of spheres
    shares about a quarter of them: the mean of |overlap - n/4| and the standard deviation of the
    overlaps fall under `epsilon_mean` and `epsilon_stddev` times n/4, or `max_iter` updates have run. Training uses a
    random subsample of at most `max_samples` points.

    The paper ranks these codes by its spherical Hamming distance; this project ranks every method
    by plain Hamming distance, so SpH is evaluated under the same distance as the other baselines.

    Parameters
    ----------
    n_bits : int
        Code length (number of spheres).
    random_state : int or None
        Seed of the subsample and of the initial pivots.
    max_iter : int
        Maximum number of pivot updates.
    max_samples : int
        Training subsample size.
    epsilon_mean, epsilon_stddev : float
        Convergence tolerances on the overlaps, as fractions of n/4 (the paper's 0.10 and 0.15).

    Attributes
    ----------
    mean_ : (n_features,) float32 training mean; pivots live in the centred space.
    pivots_ : (n_bits, n_features) float32 sphere centres.
    radii_ : (n_bits,) float64 sphere radii.
    n_iter_ : int number of pivot updates run.
    converged_ : bool whether the overlap tolerances were met.
    """

    name = "sph"
    display_name = "SpH"

    def __init__(
        self,
        n_bits: int,
        random_state: int | None = None,
        max_iter: int = 50,
        max_samples: int = 10_000,
        epsilon_mean: float = 0.1,
        epsilon_stddev: float = 0.15,
    ) -> None:
        super().__init__(n_bits, random_state)
        self.max_iter = max_iter
        self.max_samples = max_samples
        self.epsilon_mean = epsilon_mean
        self.epsilon_stddev = epsilon_stddev

    def _check_params(self, X: np.ndarray) -> None:
        check_positive_int(self.max_iter, "max_iter", minimum=0)
        check_positive_int(self.max_samples, "max_samples", minimum=2)
        check_positive_float(self.epsilon_mean, "epsilon_mean")
        check_positive_float(self.epsilon_stddev, "epsilon_stddev")
        if X.shape[0] < 2:
            raise InputError(f"SphericalHashing needs at least 2 training samples; got {X.shape[0]}")

    def _fit(self, X: np.ndarray) -> None:
        rng = np.random.default_rng(self.random_state)
        if X.shape[0] > self.max_samples:
            X = X[np.sort(rng.choice(X.shape[0], self.max_samples, replace=False))]
        mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        points = X - mean
        picks = rng.integers(0, points.shape[0], size=(self.n_bits, _POINTS_PER_INITIAL_PIVOT))
        pivots = points[picks].mean(axis=1)
        converged, n_iter = False, 0
        while True:
            squared_distances = squared_distances_to(points, pivots)
            squared_radii = half_population_radii(squared_distances)
            overlaps = pairwise_overlaps(squared_distances <= squared_radii)
            converged = overlaps_balanced(overlaps, points.shape[0], self.epsilon_mean, self.epsilon_stddev)
            if converged or n_iter == self.max_iter:
                break
            pivots = pivots + pivot_forces(pivots, overlaps, points.shape[0])
            n_iter += 1
        self.mean_, self.pivots_ = mean, pivots.astype(np.float32)
        self.radii_ = np.sqrt(squared_radii.astype(np.float64))
        self.n_iter_, self.converged_ = n_iter, bool(converged)

    def _project(self, X: np.ndarray) -> np.ndarray:
        return self.radii_**2 - squared_distances_to(X - self.mean_, self.pivots_)


def squared_distances_to(points: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """(n, c) squared Euclidean distances, by one matrix product."""
    squared = (
        np.einsum("ij,ij->i", points, points)[:, None]
        - 2.0 * (points @ pivots.T)
        + np.einsum("ij,ij->i", pivots, pivots)[None, :]
    )
    return np.maximum(squared, 0.0)


def half_population_radii(squared_distances: np.ndarray) -> np.ndarray:
    """Per sphere, the squared radius enclosing exactly half the points.

    The radius lies midway between the n/2-th and the next distance, so no training point sits on a
    boundary where rounding in a differently blocked matrix product could flip its bit.
    """
    n_points = squared_distances.shape[0]
    half = max(n_points // 2, 1)
    nearest = np.sqrt(np.partition(squared_distances, [half - 1, min(half, n_points - 1)], axis=0))
    return ((nearest[half - 1] + nearest[min(half, n_points - 1)]) / 2) ** 2


def pairwise_overlaps(inside: np.ndarray) -> np.ndarray:
    """(c, c) counts of points inside both spheres i and j."""
    as_float = inside.astype(np.float32)
    return as_float.T @ as_float


def overlaps_balanced(overlaps: np.ndarray, n_points: int, epsilon_mean: float, epsilon_stddev: float) -> bool:
    """Heo et al.'s stopping rule: overlaps of distinct pairs close to n/4 in mean and spread."""
    if overlaps.shape[0] < 2:
        return True
    quarter = n_points / 4
    pairs = overlaps[np.triu_indices(overlaps.shape[0], k=1)]
    return bool(
        np.mean(np.abs(pairs - quarter)) <= epsilon_mean * quarter and np.std(pairs) <= epsilon_stddev * quarter
    )


def pivot_forces(pivots: np.ndarray, overlaps: np.ndarray, n_points: int) -> np.ndarray:
    """Mean pairwise force on each pivot: repelled by spheres it overlaps too much, attracted otherwise."""
    quarter = n_points / 4
    strength = 0.5 * (overlaps - quarter) / quarter
    np.fill_diagonal(strength, 0.0)
    forces = strength.sum(axis=1)[:, None] * pivots - strength @ pivots
    return (forces / pivots.shape[0]).astype(pivots.dtype)
