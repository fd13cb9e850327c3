"""Neighbourhood structure S of the training images: cosine K-NN, the paper's Algorithm 1, supervised S."""

from bganhash.neighborhood.algorithm import expand_neighborhood, neighborhood_structure
from bganhash.neighborhood.knn import KNN_METHODS, estimate_knn_recall, knn_cosine
from bganhash.neighborhood.supervised import (
    knn_label_precision_curve,
    label_neighborhood,
    label_precision,
    positives_per_image,
)

__all__ = [
    "KNN_METHODS",
    "estimate_knn_recall",
    "expand_neighborhood",
    "knn_cosine",
    "knn_label_precision_curve",
    "label_neighborhood",
    "label_precision",
    "neighborhood_structure",
    "positives_per_image",
]
