"""The reproduction report: tables beside the paper's numbers, figures, and the JSON of every number.

Assembled only from the cell files a run wrote under `<out>/cells/` (see `bganhash.research.results`)
and the published numbers in `bganhash.research.paper`, so nothing in it is typed in by hand.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sklearn

import bganhash
from bganhash._io import write_json, write_text
from bganhash._system import machine_description
from bganhash.registry import display_name
from bganhash.research import paper
from bganhash.research.cells import GALLERY_TOP, decode_array
from bganhash.research.document import Document
from bganhash.research.plan import BASELINE_METHODS, FIGURE_BITS, Cell, ReproduceSettings, report_plan
from bganhash.research.protocol import RANKING_RULE
from bganhash.research.results import bits_done, by_role, fold_seeds, load_cells
from bganhash.research.tables import SECTIONS

GALLERY_SIDE = 32
FILES = ("report.md", "report.html", "results.json", "split.json", "config.json", "versions.json")


def write_report(out: Path, settings: ReproduceSettings, data, requested: dict[str, list[int]]) -> dict[str, Path]:
    """Assemble report.md, report.html, results.json, split.json, config.json and versions.json (and
    the figures) from the cell files under `out` of the `requested` experiments."""
    return assemble_report(out, settings, data, load_cells(out, report_plan(settings, requested)))


def assemble_report(out: Path, settings: ReproduceSettings, data,
                    cells: dict[str, tuple[Cell, dict]]) -> dict[str, Path]:
    """Write every report file under `out` from the completed `cells`; returns their paths."""
    results = fold_seeds(by_role(cells))
    info = run_information(settings, data, cells)
    doc, tables = Document(), {}
    doc.heading(1, f"BGAN reproduction on {info['dataset_label']}")
    if settings.quick:
        doc.warning("QUICK RUN (--quick): a smoke test on a subset of the split with shortened training. "
                    "These numbers are NOT a reproduction of the paper.")
    _run_section(doc, info)
    for experiment, section in SECTIONS.items():
        if bits_done(results, experiment):
            tables[experiment] = section(doc, results, settings.dataset, info)
    figures = _figures(doc, out, results, data)
    files = {name: out / name for name in FILES}
    write_text(files["report.md"], doc.markdown())
    write_text(files["report.html"], doc.html(out, f"BGAN reproduction on {info['dataset_label']}"))
    write_json(files["results.json"], {"run": info, "tables": tables,
                                       "cells": {cid: result for cid, (_, result) in cells.items()}})
    data.split.save(files["split.json"])
    write_json(files["config.json"], {"settings": settings.identity(), "bgan": {
        cid: result["config"] for cid, (cell, result) in cells.items() if "config" in result}})
    write_json(files["versions.json"], software_versions())
    return {**files, **{f"figures/{p.name}": p for p in figures}}


def run_information(settings: ReproduceSettings, data, cells: dict[str, tuple[Cell, dict]]) -> dict[str, Any]:
    """What every table's notes say: data copy, features, split, preset, ranking rule, machine."""
    presets = sorted({result["config"]["preset"] for _, result in cells.values() if "config" in result})
    jpeg = paper.jpeg_copy(settings.dataset, settings.data)
    return {
        "dataset": settings.dataset,
        "dataset_label": settings.dataset if jpeg is None else jpeg.label,
        "data": settings.data, "features": data.feature_source, "seed": settings.seed, "quick": settings.quick,
        "split": {"protocol": data.split.protocol, **data.split.sizes()},
        "presets": presets, "overrides": dict(settings.overrides), "ranking": RANKING_RULE,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _run_section(doc: Document, info: dict[str, Any]) -> None:
    split = info["split"]
    doc.paragraph(
        f"Split: {split['protocol']} (seed {info['seed']}): {split['query']} queries, {split['train']} training "
        f"images, {split['database']} database images. Metric: mAP@all. Ranking: {info['ranking']}. "
        f"Features: {info['features']}. BGAN preset: {', '.join(info['presets']) or '–'}. "
        f"Machine: {info['machine']}. Date: {info['date']}.")
    doc.paragraph(
        "**What differs from the paper.** " + _data_difference(info) + " "
        + " ".join(PRESET_DIFFERENCES.get(preset, f"Preset `{preset}`.") for preset in info["presets"])
        + _overrides_note(info.get("overrides") or {}) + " " + IMPLEMENTATION_CHOICES
        + " Every number marked \"ours\" was produced by this run (see results.json); every \"paper\" number"
        " is copied from the paper.")


PRESET_DIFFERENCES = {
    "cpu": "Preset `cpu`: a hash head (one FC layer of 1024) on frozen, cached ImageNet-pretrained features "
           "instead of the paper's VGG encoder trained from pixels; the generator and discriminator at 1/16 of "
           "the paper's widths, 16x16 reconstructions; Adam 1e-3, batch 128, 5 epochs per β stage; K1 = K2 = 50 "
           "on square-rooted, L2-normalised, centred features; λ1 = 0.01, app(βz), and the authors' "
           "quantisation term 0.1·mean((z − sgn z)²).",
    "paper": "Preset `paper`: the paper's Section 4.1.4 values: the Table 1 VGG encoder trained from pixels "
             "(He-initialised from scratch, no ImageNet VGG weights; images smaller than 32x32 upsampled to 32), "
             "FC6/FC7 of 4096, full generator and discriminator widths, K1 = 20, K2 = 30, λ1 = λ2 = 0.1, "
             "tanh(βz), SGD lr 0.01, batch 256, 15 epochs per β stage, no quantisation term.",
}
IMPLEMENTATION_CHOICES = (
    "Choices the paper does not state, both presets: SGD (the `paper` preset) uses momentum 0.9; the "
    "generator descends the non-saturating adversarial loss −log D(Î) rather than log(1 − D(Î)) (same fixed "
    "point, useful gradients while D wins); under Eq. 18 ℓA does not reach the encoder unless "
    "`adversarial_reaches_encoder` is set (the loss-component ablation shows both readings).")


def _overrides_note(overrides: dict[str, Any]) -> str:
    """The run's `--set` values, which change the preset's settings above for every BGAN cell."""
    if not overrides:
        return ""
    shown = ", ".join(f"`{name}={json.dumps(value)}`" for name, value in sorted(overrides.items()))
    return f" Changed from the preset for every BGAN cell (`--set`): {shown}."


def _data_difference(info: dict[str, Any]) -> str:
    entry = paper.DATASETS.get(info["dataset"])
    if entry is None:
        return f"The paper reports no results on {info['dataset']}: only our numbers are shown."
    jpeg = paper.jpeg_copy(info["dataset"], info["data"])
    return entry.data_note if jpeg is None else jpeg.report_note


# ---- figures -------------------------------------------------------------------------------------------


def _figures(doc: Document, out: Path, results: dict, data) -> list[Path]:
    from bganhash.research import figures  # matplotlib

    folder, made = out / "figures", []
    doc.heading(2, "Figures")
    figure2 = results.get(("figure2", "curve", 0))
    if figure2:
        made.append(figures.plot_label_precision(figure2["curve"], folder / "figure2.png"))
        doc.image("figures/figure2.png", "Figure 2: label precision of the K1-NN lists and of Algorithm 1's "
                  f"expansion on the training images (features: {figure2['feature_transform']}).")
    for b in bits_done(results, "table3"):
        curves = {display_name(m): results[("table3", m, b)]["curves"] for m in ("bgan", *BASELINE_METHODS)
                  if ("table3", m, b) in results}
        made.append(figures.plot_retrieval_curves(curves, folder / f"figure4-{b}bits.png", f"{b} bits"))
        doc.image(f"figures/figure4-{b}bits.png", f"Figure 4 ({b} bits): precision@K up to K = 1,000 and "
                  "precision-recall over Hamming radii, every method.")
    for b in bits_done(results, "figure5"):
        history = results[("figure5", "convergence", b)]["history"]
        made.append(figures.plot_convergence(history, folder / f"figure5-{b}bits.png", f"{b} bits"))
        doc.image(f"figures/figure5-{b}bits.png", f"Figure 5 ({b} bits): mean losses and validation mAP per "
                  "epoch (validation queries carved from the training images), β stages marked.")
    made += _figure6_and_gallery(doc, folder, results, data)
    return made


def _figure_bits(results: dict) -> int | None:
    done = [b for b in bits_done(results, "table3") if ("table3", "bgan", b) in results]
    return None if not done else (FIGURE_BITS if FIGURE_BITS in done else max(done))


def _figure6_and_gallery(doc: Document, folder: Path, results: dict, data) -> list[Path]:
    from bganhash.research import figures  # matplotlib

    bits, made = _figure_bits(results), []
    if bits is None:
        return made
    bgan = results[("table3", "bgan", bits)]
    if bgan.get("reconstructions"):
        images = {k: decode_array(v) for k, v in bgan["reconstructions"].items()}
        rows = [("random codes", images["random"]), ("reconstructed", images["reconstructed"]),
                ("input", images["inputs"])]
        made.append(figures.plot_image_rows(rows, folder / "figure6.png", f"{bits} bits"))
        doc.image("figures/figure6.png", f"Figure 6 ({bits} bits): images generated from random codes (top), "
                  "reconstructions of query images from their binary codes (middle), the inputs (bottom).")
    itq = results.get(("table3", "itq", bits))
    if itq is not None:
        queries = np.asarray(bgan["gallery"]["queries"])
        panels = {display_name(method): _gallery_panel(result["gallery"]["top"], queries, data)
                  for method, result in (("bgan", bgan), ("itq", itq))}
        made.append(figures.plot_gallery(data.dataset.to_array(queries, size=GALLERY_SIDE), panels,
                                         folder / "gallery.png", f"{bits} bits"))
        doc.image("figures/gallery.png", f"Retrieval gallery ({bits} bits): each query, then its top "
                  f"{GALLERY_TOP} database images for {' and for '.join(panels)}; green: shares a label with "
                  "the query, red: not.")
    return made


def _gallery_panel(top: list[list[int]], queries: np.ndarray, data) -> tuple[np.ndarray, np.ndarray]:
    top = np.asarray(top, dtype=np.int64)
    images = data.dataset.to_array(top.ravel(), size=GALLERY_SIDE).reshape(*top.shape, GALLERY_SIDE, GALLERY_SIDE, 3)
    labels = data.labels
    if labels.ndim == 1:
        relevant = labels[queries][:, None] == labels[top]
    else:
        relevant = (labels[queries][:, None, :].astype(bool) & labels[top].astype(bool)).any(axis=-1)
    return images, relevant


def software_versions() -> dict[str, str]:
    """Versions of Python, the numeric libraries and bganhash, and the machine."""
    import matplotlib
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__,
            "bganhash": bganhash.__version__, "platform": platform.platform(), "machine": machine_description()}
