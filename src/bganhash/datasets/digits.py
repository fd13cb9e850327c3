"""scikit-learn's embedded handwritten digits: the dataset that needs no download and no data folder."""

from __future__ import annotations

import numpy as np

from bganhash.datasets.base import ArraySource, Dataset

DIGITS_MAX_VALUE = 16  # load_digits pixels are counts 0..16 of an 8x8 downsampling


def load_digits_dataset() -> Dataset:
    """The 1,797 8x8 digit images, scaled from 0..16 to 0..255 and replicated to RGB, labels 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    gray = np.rint(bunch.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    return Dataset(
        "digits",
        ArraySource(images),
        [f"digits/{i}" for i in range(len(images))],
        labels=bunch.target.astype(np.int64),
        class_names=[str(int(name)) for name in bunch.target_names],
    )
