"""The paper's figures as small PNGs (matplotlib, Agg backend): label precision of the neighbourhood
(Figure 2), precision@K and precision-recall curves (Figure 4), convergence (Figure 5), reconstructions
(Figure 6) and a retrieval gallery. Each function takes plain arrays, writes one PNG atomically and
returns its path."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bganhash._io import atomic_write  # noqa: E402
from bganhash._validation import InputError  # noqa: E402

DPI = 80
PALETTE_COLOURS = 128
RELEVANT_COLOUR = "#1a9850"
IRRELEVANT_COLOUR = "#d73027"
LOSS_KEYS = ("loss_n", "loss_c", "loss_g", "loss_a", "loss_q")


def _save(figure: Any, path: str | os.PathLike) -> Path:
    """Write `figure` as a palette PNG (about 3x smaller than RGBA) at `path`, atomically, and close it."""
    target, buffer = Path(path), io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=PALETTE_COLOURS)
    with atomic_write(target, "wb") as handle:
        palette.save(handle, format="png", optimize=True)
    return target


def plot_label_precision(curve: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Figure 2: label precision of plain K1-NN lists and of their Algorithm-1 expansion, against K1.

    `curve` is what `neighborhood.knn_label_precision_curve` returns.
    """
    figure, axes = plt.subplots(figsize=(4.5, 3.2))
    axes.plot(curve["k1"], curve["knn_precision"], "o-", label="K1-NN")
    axes.plot(curve["k1"], curve["expanded_precision"], "s-", label=f"Algorithm 1 (K2 = {curve['k2']})")
    axes.set_xlabel("K1")
    axes.set_ylabel("label precision")
    axes.set_title(title or "Neighbourhood label precision", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_retrieval_curves(curves: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike,
                          title: str = "") -> Path:
    """Figure 4 at one bit length: precision@K (left) and precision-recall (right), one line per method.

    curves: method -> {"ks", "precision_at_k", "precision", "recall"}.
    """
    if not curves:
        raise InputError("plot_retrieval_curves needs at least one method's curves")
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for method, curve in curves.items():
        left.plot(curve["ks"], curve["precision_at_k"], label=method)
        right.plot(curve["recall"], curve["precision"], label=method)
    left.set_xlabel("K (top retrieved)")
    left.set_ylabel("precision@K")
    right.set_xlabel("recall")
    right.set_ylabel("precision")
    right.set_xlim(0, 1)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    left.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_convergence(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Figure 5: mean losses per epoch (left) and validation mAP (right), the beta stages marked."""
    if not history:
        raise InputError("plot_convergence needs at least one epoch of history")
    epochs = np.arange(1, len(history) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for key in LOSS_KEYS:
        values = [record.get(key) for record in history]
        if all(v is not None for v in values) and any(v != 0 for v in values):
            left.plot(epochs, values, label=key)
    scores = [record.get("val_map") for record in history]
    if all(s is not None for s in scores):
        right.plot(epochs, scores, "o-", color="black", markersize=3)
    left.set_ylabel("mean loss per batch")
    right.set_ylabel("validation mAP@all")
    for axes in (left, right):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        _mark_stages(axes, history)
    left.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _mark_stages(axes: Any, history: Sequence[dict[str, Any]]) -> None:
    """Dashed lines where beta changes, each stage labelled with its beta."""
    for epoch, record in enumerate(history, start=1):
        if epoch == 1 or record.get("beta") != history[epoch - 2].get("beta"):
            if epoch > 1:
                axes.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=0.8)
            axes.text(epoch - 0.4, 1.0, f"β={record.get('beta'):g}", transform=axes.get_xaxis_transform(),
                      fontsize=7, va="bottom")


def plot_image_rows(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike, title: str = "") -> Path:
    """Figure 6: labelled rows of images, each row an (n, H, W, 3) uint8 array (n may differ per row)."""
    rows = [(label, _check_image_stack(images, label)) for label, images in rows]
    if not rows:
        raise InputError("plot_image_rows needs at least one row of images")
    n_columns = max(len(images) for _, images in rows)
    figure, axes = plt.subplots(len(rows), n_columns, figsize=(0.8 * n_columns + 1.4, 0.9 * len(rows) + 0.3),
                                squeeze=False)
    for row, (label, images) in enumerate(rows):
        for column in range(n_columns):
            cell = axes[row, column]
            cell.set_xticks([])
            cell.set_yticks([])
            if column < len(images):
                cell.imshow(images[column], interpolation="nearest")
            else:
                cell.axis("off")
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_gallery(queries: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]],
                 path: str | os.PathLike, title: str = "") -> Path:
    """Retrieval gallery: per query, its image then each method's top results side by side, relevant
    results outlined green and the others red.

    queries: (q, H, W, 3) uint8; results: method -> (images (q, k, H, W, 3) uint8, relevant (q, k) bool).
    """
    queries = _check_image_stack(queries, "queries")
    if not results:
        raise InputError("plot_gallery needs at least one method's results")
    top_k = max(images.shape[1] for images, _ in results.values())
    n_columns = 1 + len(results) * top_k
    figure, axes = plt.subplots(len(queries), n_columns, squeeze=False,
                                figsize=(0.42 * n_columns, 0.46 * len(queries) + 0.5))
    for row, query in enumerate(queries):
        _show(axes[row, 0], query, "black")
        for block, (images, relevant) in enumerate(results.values()):
            for rank in range(top_k):
                cell = axes[row, 1 + block * top_k + rank]
                if rank < images.shape[1]:
                    _show(cell, images[row, rank], RELEVANT_COLOUR if relevant[row, rank] else IRRELEVANT_COLOUR)
                else:
                    cell.axis("off")
    axes[0, 0].set_title("query", fontsize=7)
    for block, method in enumerate(results):
        axes[0, 1 + block * top_k].set_title(f"{method} top {top_k}", fontsize=7, loc="left")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.1)
    return _save(figure, path)


def _show(axes: Any, image: np.ndarray, colour: str) -> None:
    axes.imshow(image, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2)


def _check_image_stack(images: Any, name: str) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"{name} must be an (n, H, W, 3) uint8 array; got {array.dtype} {array.shape}")
    return array
