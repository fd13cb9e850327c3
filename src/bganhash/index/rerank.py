"""The second stage of a search: Hamming candidates re-ranked by cosine similarity on compact features.

Binary codes rank the top of a list coarsely (64 bits give 65 distances, and a learned hasher maps whole
neighbourhoods onto one code), so ties are ordered by insertion. `FeatureReducer` keeps a few hundred bytes
per image instead of the backbone's 1280 floats (unit rows, centred and projected on their principal axes,
float16), and `rerank` orders each query's candidates by their cosine similarity to the query, so that an
exact duplicate of the query comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bganhash._validation import InputError, check_features, check_positive_int
from bganhash.features.transforms import transform_features

DEFAULT_DIMENSIONS = 128  # stored float16 values per image (256 bytes)
DEFAULT_CANDIDATES = 200  # Hamming nearest re-ranked per query, up to 10,000 images
MAX_DEFAULT_CANDIDATES = 1000
IMAGES_PER_CANDIDATE = 50


def default_candidates(n_images: int) -> int:
    """How many Hamming-nearest codes a search re-ranks by default: 200 up to 10,000 images, then one per 50
    images, at most 1,000. At 49,500 CIFAR-10 images and 32 bits, 200 candidates gave precision@10 0.656,
    below exhaustive cosine search (0.662), and 1,000 gave 0.679 (RESULTS.md, issue 12)."""
    return min(MAX_DEFAULT_CANDIDATES, max(DEFAULT_CANDIDATES, int(n_images) // IMAGES_PER_CANDIDATE))


@dataclass
class FeatureReducer:
    """Unit rows minus their mean, projected on the top principal axes: (d,) float16 unit vectors per image."""

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (D, d) float32

    @classmethod
    def fit(cls, features: np.ndarray, dimensions: int = DEFAULT_DIMENSIONS) -> FeatureReducer:
        """Principal axes of the L2-normalised `features` (at most as many as rows and columns allow)."""
        unit = transform_features(check_features(features, "features"), "l2")
        dimensions = min(check_positive_int(dimensions, "dimensions"), *unit.shape)
        mean = unit.mean(axis=0, dtype=np.float64).astype(np.float32)
        _, _, axes = np.linalg.svd(unit - mean, full_matrices=False)
        return cls(mean, np.ascontiguousarray(axes[:dimensions].T, dtype=np.float32))

    @property
    def dimensions(self) -> int:
        return int(self.components.shape[1])

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """The (n, d) float16 unit vectors whose dot products approximate the features' cosine similarity."""
        unit = transform_features(check_features(features, "features", self.mean.shape[0]), "l2")
        projected = transform_features((unit - self.mean) @ self.components, "l2")
        return projected.astype(np.float16)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"reducer_mean": self.mean, "reducer_components": self.components}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], where: str) -> FeatureReducer:
        try:
            mean, components = arrays["reducer_mean"], arrays["reducer_components"]
        except KeyError as exc:
            raise InputError(f"{where} lacks the feature reducer ({exc.args[0]})") from None
        if mean.ndim != 1 or components.ndim != 2 or components.shape[0] != mean.shape[0]:
            raise InputError(f"{where} holds a feature reducer of shapes {mean.shape} and {components.shape}")
        return cls(mean.astype(np.float32), components.astype(np.float32))


def rerank(distances: np.ndarray, ids: np.ndarray, query_vectors: np.ndarray, vectors_of_ids,
           k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's Hamming candidates (distances, ids; -1 for none) ordered by cosine similarity to the
    query, highest first (ties: Hamming order), cut to k: (distances, ids, scores float32), -1 / NaN padded.

    `vectors_of_ids(ids)` returns the stored (n, d) vectors of valid candidate ids."""
    n_queries = ids.shape[0]
    out_distances = np.full((n_queries, k), np.iinfo(np.int32).max, np.int32)
    out_ids = np.full((n_queries, k), -1, np.int64)
    out_scores = np.full((n_queries, k), np.nan, np.float32)
    for row in range(n_queries):
        valid = np.flatnonzero(ids[row] >= 0)
        if not valid.size:
            continue
        scores = vectors_of_ids(ids[row, valid]).astype(np.float32) @ query_vectors[row].astype(np.float32)
        best = np.argsort(-scores, kind="stable")[:k]
        order, taken = valid[best], best.size
        out_distances[row, :taken], out_ids[row, :taken] = distances[row, order], ids[row, order]
        out_scores[row, :taken] = scores[best]
    return out_distances, out_ids, out_scores
