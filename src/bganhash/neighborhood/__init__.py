"""Neighbourhood structure S of the training images: cosine K-NN, the paper's Algorithm 1, supervised S."""

from bganhash.neighborhood.algorithm import (
    estimate_knn_recall,
    expand_neighborhood,
    knn_cosine,
    knn_label_precision_curve,
    label_neighborhood,
    label_precision,
    neighborhood_structure,
    positives_per_image,
)

__all__ = [
    "estimate_knn_recall",
    "expand_neighborhood",
    "knn_cosine",
    "knn_label_precision_curve",
    "label_neighborhood",
    "label_precision",
    "neighborhood_structure",
    "positives_per_image",
]
