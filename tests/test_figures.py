"""Figures: each function writes a valid PNG of the expected size from small synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bganhash._validation import InputError
from bganhash.research import figures


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def _expected(width_inches: float, height_inches: float) -> tuple[int, int]:
    return round(width_inches * figures.DPI), round(height_inches * figures.DPI)


def _history(n_stages: int = 3, epochs: int = 2) -> list[dict]:
    return [{"stage": s, "beta": [1.0, 2.0, 5.0][s], "epoch": e, "loss_n": 1.0 / (1 + s + e), "loss_c": 0.5,
             "loss_g": 0.7, "loss_a": -1.2, "loss_q": 0.1, "val_map": 0.2 + 0.05 * s}
            for s in range(n_stages) for e in range(epochs)]


def test_label_precision_png(tmp_path):
    curve = {"k1": [5, 10, 20], "k2": 30, "knn_precision": [0.8, 0.7, 0.6], "expanded_precision": [0.7, 0.65, 0.6]}
    path = figures.plot_label_precision(curve, tmp_path / "f2.png")
    assert _size(path) == _expected(4.5, 3.2)


def test_retrieval_curves_png(tmp_path):
    curve = {"ks": [1, 10, 100], "precision_at_k": [0.9, 0.8, 0.5], "precision": [0.9, 0.6, 0.1],
             "recall": [0.01, 0.3, 1.0]}
    path = figures.plot_retrieval_curves({"BGAN": curve, "ITQ": curve}, tmp_path / "f4.png", "32 bits")
    assert _size(path) == _expected(8, 3.2)
    with pytest.raises(InputError):
        figures.plot_retrieval_curves({}, tmp_path / "none.png")


def test_convergence_png_marks_stages(tmp_path):
    path = figures.plot_convergence(_history(), tmp_path / "f5.png")
    assert _size(path) == _expected(8, 3.2)
    with pytest.raises(InputError):
        figures.plot_convergence([], tmp_path / "none.png")


@pytest.mark.parametrize("n_columns, n_rows", [(4, 3), (8, 1)])
def test_image_rows_png(tmp_path, rng, n_columns, n_rows):
    rows = [(f"row {r}", rng.integers(0, 256, size=(n_columns, 8, 8, 3), dtype=np.uint8)) for r in range(n_rows)]
    path = figures.plot_image_rows(rows, tmp_path / "f6.png")
    assert _size(path) == _expected(0.8 * n_columns + 1.4, 0.9 * n_rows + 0.3)


def test_image_rows_reject_non_images(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        figures.plot_image_rows([("bad", np.zeros((2, 8, 8, 3), dtype=np.float32))], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_gallery_png(tmp_path, rng):
    queries = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    top = rng.integers(0, 256, size=(3, 4, 8, 8, 3), dtype=np.uint8)
    relevant = rng.random((3, 4)) < 0.5
    path = figures.plot_gallery(queries, {"BGAN": (top, relevant), "ITQ": (top, ~relevant)}, tmp_path / "g.png")
    n_columns = 1 + 2 * 4
    assert _size(path) == _expected(0.42 * n_columns, 0.46 * 3 + 0.5)


def test_png_is_a_small_palette_image(tmp_path):
    path = figures.plot_convergence(_history(), tmp_path / "f5.png")
    with Image.open(path) as image:
        assert image.mode == "P"
    assert path.stat().st_size < 60_000
