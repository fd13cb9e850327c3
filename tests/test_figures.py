"""Figures: what each function plots (the data behind its lines, images and outlines), read from the
matplotlib figure it saves, and that the file it writes is a small palette PNG."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest
from PIL import Image

from bganhash._validation import InputError
from bganhash.research import figures


@pytest.fixture
def saved(monkeypatch):
    """The matplotlib figures the plot functions save, in order (each is still written to its file)."""
    captured = []
    original = figures._save

    def keep(figure, path):
        captured.append(figure)
        return original(figure, path)

    monkeypatch.setattr(figures, "_save", keep)
    return captured


def _lines(axes) -> dict[str, tuple[list, list]]:
    """Each labelled line of `axes`: label -> (x data, y data)."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.lines
            if not line.get_label().startswith("_")}


def _history(n_stages: int = 3, epochs: int = 2) -> list[dict]:
    return [{"stage": s, "beta": [1.0, 2.0, 5.0][s], "epoch": e, "loss_n": 1.0 / (1 + s + e), "loss_c": 0.5,
             "loss_g": 0.7, "loss_a": -1.2, "loss_q": 0.0, "val_map": 0.2 + 0.05 * s}
            for s in range(n_stages) for e in range(epochs)]


def test_label_precision_plots_both_curves_against_k1(tmp_path, saved):
    curve = {"k1": [5, 10, 20], "k2": 30, "knn_precision": [0.8, 0.7, 0.6], "expanded_precision": [0.7, 0.65, 0.6]}
    path = figures.plot_label_precision(curve, tmp_path / "f2.png")
    lines = _lines(saved[0].axes[0])
    assert lines == {"K1-NN": ([5, 10, 20], [0.8, 0.7, 0.6]),
                     "Algorithm 1 (K2 = 30)": ([5, 10, 20], [0.7, 0.65, 0.6])}
    assert saved[0].axes[0].get_xlabel() == "K1" and path.is_file()


def test_retrieval_curves_plot_each_methods_precision_at_k_and_pr(tmp_path, saved):
    bgan = {"ks": [1, 10, 100], "precision_at_k": [0.9, 0.8, 0.5], "precision": [0.9, 0.6, 0.1],
            "recall": [0.01, 0.3, 1.0]}
    itq = {"ks": [1, 10], "precision_at_k": [0.4, 0.3], "precision": [0.5, 0.2], "recall": [0.1, 0.9]}
    figures.plot_retrieval_curves({"BGAN": bgan, "ITQ": itq}, tmp_path / "f4.png", "32 bits")
    left, right = saved[0].axes
    assert _lines(left) == {"BGAN": ([1, 10, 100], [0.9, 0.8, 0.5]), "ITQ": ([1, 10], [0.4, 0.3])}
    assert _lines(right) == {"BGAN": ([0.01, 0.3, 1.0], [0.9, 0.6, 0.1]), "ITQ": ([0.1, 0.9], [0.5, 0.2])}
    assert saved[0].texts[0].get_text() == "32 bits"  # the suptitle
    with pytest.raises(InputError):
        figures.plot_retrieval_curves({}, tmp_path / "none.png")


def test_convergence_plots_the_nonzero_losses_val_map_and_stage_marks(tmp_path, saved):
    history = _history()
    figures.plot_convergence(history, tmp_path / "f5.png")
    left, right = saved[0].axes
    losses = _lines(left)
    assert set(losses) == {"loss_n", "loss_c", "loss_g", "loss_a"}  # loss_q is all zeros: not drawn
    assert losses["loss_n"] == ([1, 2, 3, 4, 5, 6], [r["loss_n"] for r in history])
    drawn_map = [line for line in right.lines if line.get_linestyle() == "-"]
    assert list(drawn_map[0].get_ydata()) == [r["val_map"] for r in history]
    stage_marks = sorted(line.get_xdata()[0] for line in left.lines if line.get_linestyle() == "--")
    assert stage_marks == [2.5, 4.5]  # beta changes after epochs 2 and 4
    assert [t.get_text() for t in left.texts] == ["β=1", "β=2", "β=5"]
    with pytest.raises(InputError):
        figures.plot_convergence([], tmp_path / "none.png")


def test_convergence_without_validation_map_draws_no_map_line(tmp_path, saved):
    history = [{k: v for k, v in record.items() if k != "val_map"} for record in _history(1, 3)]
    figures.plot_convergence(history, tmp_path / "f5.png")
    assert not [line for line in saved[0].axes[1].lines if line.get_linestyle() == "-"]


@pytest.mark.parametrize("n_columns, n_rows", [(4, 3), (8, 1)])
def test_image_rows_show_each_image_in_its_cell(tmp_path, rng, saved, n_columns, n_rows):
    rows = [(f"row {r}", rng.integers(0, 256, size=(n_columns - r, 8, 8, 3), dtype=np.uint8)) for r in range(n_rows)]
    figures.plot_image_rows(rows, tmp_path / "f6.png")
    grid = np.array(saved[0].axes).reshape(n_rows, n_columns)
    for r, (label, images) in enumerate(rows):
        assert grid[r, 0].get_ylabel() == label
        for c in range(n_columns):
            shown = grid[r, c].images
            if c < len(images):
                assert np.array_equal(np.asarray(shown[0].get_array()), images[c])
            else:
                assert not shown and not grid[r, c].axison


def test_image_rows_reject_non_images(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        figures.plot_image_rows([("bad", np.zeros((2, 8, 8, 3), dtype=np.float32))], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_gallery_outlines_relevant_results_green_and_the_others_red(tmp_path, rng, saved):
    queries = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    top = rng.integers(0, 256, size=(3, 4, 8, 8, 3), dtype=np.uint8)
    relevant = rng.random((3, 4)) < 0.5
    figures.plot_gallery(queries, {"BGAN": (top, relevant), "ITQ": (top[:, ::-1], ~relevant)}, tmp_path / "g.png")
    grid = np.array(saved[0].axes).reshape(3, 1 + 2 * 4)
    green, red = (matplotlib.colors.to_rgba(c) for c in (figures.RELEVANT_COLOUR, figures.IRRELEVANT_COLOUR))
    for q in range(3):
        assert np.array_equal(np.asarray(grid[q, 0].images[0].get_array()), queries[q])
        for rank in range(4):
            for block, (images, marks) in enumerate(((top, relevant), (top[:, ::-1], ~relevant))):
                cell = grid[q, 1 + block * 4 + rank]
                assert np.array_equal(np.asarray(cell.images[0].get_array()), images[q, rank])
                assert cell.spines["left"].get_edgecolor() == (green if marks[q, rank] else red)
    assert grid[0, 1].get_title(loc="left") == "BGAN top 4" and grid[0, 5].get_title(loc="left") == "ITQ top 4"


def test_png_is_a_small_palette_image(tmp_path):
    path = figures.plot_convergence(_history(), tmp_path / "f5.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P"
        assert image.size == (round(8 * figures.DPI), round(3.2 * figures.DPI))
    assert path.stat().st_size < 60_000
