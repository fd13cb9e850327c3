"""The reproduction report: tables beside the paper's numbers, figures, and the JSON of every number.

Assembled only from the cell files a run wrote under `<out>/cells/` (see `bganhash.research.reproduce`) and
the published numbers in `bganhash.research.paper`, so nothing in it is typed in by hand.
"""

from __future__ import annotations

import base64
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from bganhash.research import paper
from bganhash._io import write_json
from bganhash._system import machine_description
from bganhash.registry import display_name
from bganhash.research.reproduce import (
    BASELINE_METHODS,
    FIGURE_BITS,
    GALLERY_TOP,
    TABLE4_VARIANTS,
    Cell,
    ReproduceSettings,
    cell_path,
    decode_array,
    report_plan,
)


# ---- the report --------------------------------------------------------------------------------------


def write_report(out: Path, settings: ReproduceSettings, data, requested: dict[str, list[int]]) -> dict[str, Path]:
    """Assemble report.md, report.html, results.json, split.json, config.json and versions.json (and
    the figures) from the cell files under `out` of the `requested` experiments."""
    return assemble_report(out, settings, data, load_cells(out, report_plan(settings, requested)))


def load_cells(out: Path, plan: list[Cell]) -> dict[str, tuple[Cell, dict]]:
    """The completed cells of `plan` (those with a result file), by id."""
    found = {}
    for cell in plan:
        path = cell_path(out, cell.id)
        if path.is_file():
            found[cell.id] = (cell, json.loads(path.read_text(encoding="utf-8")))
    return found


# ---- report assembly ---------------------------------------------------------------------------------

TABLE2_ROWS = ("N", "N+C", "N+A", "N+C+A", "C", "A", "C+A")
LOSS_NAMES = {"N": "ℓN", "C": "ℓC", "A": "ℓA"}
GALLERY_SIDE = 32


class Document:
    """Report blocks rendered to Markdown and to self-contained HTML (figures as base64 PNG)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def warning(self, text: str) -> None:
        self.blocks.append(("warning", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, name: str, caption: str) -> None:
        self.blocks.append(("image", (name, caption)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append("#" * value[0] + " " + value[1])
            elif kind == "paragraph":
                parts.append(value)
            elif kind == "warning":
                parts.append(f"> **{value}**")
            elif kind == "table":
                header, rows = value
                lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                parts.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]))
            else:
                parts.append(f"![{value[1]}]({value[0]})\n\n*{value[1]}*")
        return "\n\n".join(parts) + "\n"

    def html(self, folder: Path, title: str) -> str:
        import html

        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "warning":
                body.append(f'<p class="warning"><strong>{_inline(value)}</strong></p>')
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            else:
                data = base64.b64encode((folder / value[0]).read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(value[1])}">'
                            f"<figcaption>{_inline(value[1])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .5em;"
                 "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
                 ".warning{background:#fee;border:2px solid #c00;padding:.5em}")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape HTML, then render the Markdown **bold** and `code` spans the report uses."""
    import html
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _by_role(cells: dict[str, tuple[Cell, dict]]) -> dict[tuple[str, str, int], dict]:
    """Cell results indexed by (experiment, row, bits)."""
    return {role: result for cell, result in cells.values() for role in cell.roles}


def _bits_done(results: dict, experiment: str) -> list[int]:
    return sorted({bits for (name, _, bits) in results if name == experiment})


def assemble_report(out: Path, settings: ReproduceSettings, data,
                    cells: dict[str, tuple[Cell, dict]]) -> dict[str, Path]:
    """Write every report file under `out` from the completed `cells`; returns their paths."""
    results = _by_role(cells)
    info = run_information(settings, data, cells)
    doc, tables = Document(), {}
    doc.heading(1, f"BGAN reproduction on {info['dataset_label']}")
    if settings.quick:
        doc.warning("QUICK RUN (--quick): a smoke test on a subset of the split with shortened training. "
                    "These numbers are NOT a reproduction of the paper.")
    _run_section(doc, info)
    for experiment, section in (("table2", _table2), ("table3", _table3), ("table4", _table4),
                                ("table5", _table5), ("table6", _table6)):
        if _bits_done(results, experiment):
            tables[experiment] = section(doc, results, settings.dataset, info)
    figures = _figures(doc, out, results, data)
    names = ("report.md", "report.html", "results.json", "split.json", "config.json", "versions.json")
    files = {name: out / name for name in names}
    from bganhash._io import write_text

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
    from bganhash.research.protocol import RANKING_RULE

    presets = sorted({result["config"]["preset"] for _, result in cells.values() if "config" in result})
    jpeg_copy = settings.dataset == "cifar10" and str(settings.data or "").endswith(".zip")
    return {
        "dataset": settings.dataset,
        "dataset_label": "CIFAR-10 (JPEG copy)" if jpeg_copy else settings.dataset,
        "data": settings.data, "features": data.feature_source, "seed": settings.seed, "quick": settings.quick,
        "split": {"protocol": data.split.protocol, **data.split.sizes()},
        "presets": presets, "ranking": RANKING_RULE, "machine": machine_description(),
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
        "**What differs from the paper.** " + _data_difference(info) + " The paper's BGAN trains a VGG-style "
        "encoder from pixels on a GPU; ours names its preset above (`cpu`: a hash head on frozen, cached "
        "ImageNet-pretrained features with a narrow generator and discriminator). Every number marked "
        "\"ours\" was produced by this run (see results.json); every \"paper\" number is copied from the paper.")


def _data_difference(info: dict[str, Any]) -> str:
    if info["dataset"] == "cifar10":
        jpeg = "a JPEG copy of CIFAR-10, whose pixels differ slightly from" if "JPEG" in info["dataset_label"] \
            else "CIFAR-10 read from"
        return f"Data: {jpeg} the official pickles the paper used."
    if info["dataset"] in paper.TABLE3:
        return f"Data: the user's copy of {info['dataset']}."
    return f"The paper reports no results on {info['dataset']}: only our numbers are shown."


def _paper_note(dataset: str) -> str:
    if dataset == "cifar10":
        return ""
    return " The paper reports this table on CIFAR-10 only, so no paper numbers are shown."


def _pair_header(first: str, bits: list[int]) -> list[str]:
    return [first] + [f"{b} bits ({who})" for b in bits for who in ("ours", "paper")]


def _table2(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = _bits_done(results, "table2")
    doc.heading(2, "Table 2: loss components (mAP@all)")
    rows, numbers = [], {}
    for row in TABLE2_ROWS:
        cells, numbers[row] = [" + ".join(LOSS_NAMES[part] for part in row.split("+"))], {}
        for b in bits:
            result = results.get(("table2", row, b))
            published = paper.paper_row({dataset: paper.TABLE2}, dataset, row, b, paper.TABLE2_BITS) \
                if dataset == "cifar10" else None
            cells += [_table2_ours(row, result), _table2_paper(row, published, dataset)]
            numbers[row][str(b)] = None if result is None else {
                "map": result["map"], "distinct_codes": result["distinct_codes"], "n_database": result["n_database"],
                "paper": published}
        rows.append(cells)
    doc.table(_pair_header("Losses", bits), rows)
    doc.paragraph("Rows without ℓN have no term tying codes to image similarity: the paper reports them as "
                  "collapsed (\"–\"); we train them and show the measured collapse, the number of distinct codes "
                  "among the database codes." + _paper_note(dataset))
    return {"bits": bits, "rows": numbers}


def _table2_ours(row: str, result: dict | None) -> str:
    if result is None:
        return "not run"
    if "N" in row.split("+"):
        return _fmt(result["map"])
    return f"{_fmt(result['map'])}; {result['distinct_codes']} of {result['n_database']} distinct codes"


def _table2_paper(row: str, published: float | None, dataset: str) -> str:
    if dataset == "cifar10" and "N" not in row.split("+"):
        return "– (codes collapse)"
    return _fmt(published)


def _table3(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = _bits_done(results, "table3")
    doc.heading(2, f"Table 3: unsupervised methods on {info['dataset_label']} (mAP@all)")
    header = ["Method"] + [f"{b} bits" for b in bits]
    rows, numbers, published = [], {}, paper.TABLE3.get(dataset, {})
    for method in ("bgan", *BASELINE_METHODS):
        name = display_name(method)
        ours = [results.get(("table3", method, b)) for b in bits]
        numbers[method] = {str(b): (r["map"] if r else None) for b, r in zip(bits, ours)}
        rows.append([f"{name} (ours)"] + [_fmt(r["map"]) if r else "not run" for r in ours])
        counterpart = paper.TABLE3_COUNTERPART.get(method)
        if counterpart in published:
            rows.append([f"{counterpart} (paper)"] + [_fmt(paper.paper_row(paper.TABLE3, dataset, counterpart, b))
                                                      for b in bits])
    shown = set(paper.TABLE3_COUNTERPART.values())
    for row in published:
        if row not in shown:
            rows.append([f"{row} (paper)"] + [_fmt(paper.paper_row(paper.TABLE3, dataset, row, b)) for b in bits])
    doc.table(header, rows)
    doc.paragraph("Our baselines run on the same features as our BGAN; each is followed by the paper's row "
                  "for the same method on VGG-fc7 features (\"+VGG\"); the paper's other rows used hand-crafted "
                  "features or their own deep networks. PCAH has no row in the paper.")
    return {"bits": bits, "ours": numbers, "paper": {row: list(values) for row, values in published.items()}}


def _table4(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = _bits_done(results, "table4")
    doc.heading(2, "Table 4: sign approximation (mAP@all)")
    names = {"two_step": "two-step", "tanh": "tanh(βz)", "app": "app(βz)"}
    rows, numbers = [], {}
    for row in TABLE4_VARIANTS:
        cells, numbers[row] = [names[row]], {}
        for b in bits:
            result = results.get(("table4", row, b))
            published = paper.paper_row({dataset: paper.TABLE4}, dataset, row, b, paper.TABLE4_BITS) \
                if dataset == "cifar10" else None
            cells += [_fmt(result["map"]) if result else "not run", _fmt(published)]
            numbers[row][str(b)] = {"map": result["map"] if result else None, "paper": published}
        rows.append(cells)
    doc.table(_pair_header("Activation", bits), rows)
    doc.paragraph("two-step: trained with a fixed smooth activation, sign applied only afterwards; app and tanh: "
                  "β raised stage by stage (continuation)." + _paper_note(dataset))
    return {"bits": bits, "rows": numbers}


def _table5(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = _bits_done(results, "table5")
    doc.heading(2, "Table 5: supervised variant, S from labels (mAP@all)")
    ours = {str(b): (r["map"] if (r := results.get(("table5", "BGAN_s", b))) else None) for b in bits}
    rows = [["BGAN_s (ours)"] + [_fmt(ours[str(b)]) if ours[str(b)] is not None else "not run" for b in bits]]
    published = paper.TABLE5 if dataset == "cifar10" else {}
    for row in published:
        rows.append([f"{row} (paper)"] + [_fmt(paper.paper_row({dataset: published}, dataset, row, b)) for b in bits])
    doc.table(["Method"] + [f"{b} bits" for b in bits], rows)
    doc.paragraph("BGAN_s: S_ij = +1 when images i and j share a label (training labels only)." + _paper_note(dataset))
    return {"bits": bits, "ours": ours, "paper": {row: list(values) for row, values in published.items()}}


def _table6(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = _bits_done(results, "table6")
    bits = [b for b in bits if b]
    doc.heading(2, "Table 6: training and per-image encoding time")
    timing = results.get(("table6", "backbone", 0)) or {}
    backbone_ms = timing.get("backbone_ms_per_image")
    rows, numbers = [], {}
    for b in bits:
        result = results.get(("table6", "bgan", b))
        if result is None:
            continue
        on_features = result["config"]["network"]["encoder"] == "head"  # else the encoder read the pixels
        total = result["encode_ms_per_image"] + ((backbone_ms or 0.0) if on_features else 0.0)
        if not on_features:
            split = "encoder from pixels"
        elif backbone_ms is None:
            split = f"hash {result['encode_ms_per_image']:.4f}; features precomputed"
        else:
            split = f"backbone {backbone_ms:.2f} + hash {result['encode_ms_per_image']:.4f}"
        rows.append([f"BGAN (ours, {b} bits)", f"{result['fit_seconds'] / 60:.1f} min", f"{total:.2f} ms ({split})"])
        numbers[str(b)] = {"training_seconds": result["fit_seconds"],
                           "encode_ms_per_image": result["encode_ms_per_image"],
                           "backbone_ms_per_image": backbone_ms}
    for method, times in paper.TABLE6.items():
        rows.append([f"{method} (paper, GPU)", times["training"], times["testing"]])
    doc.table(["Method", "Training time", "Testing time per image"], rows)
    doc.paragraph(f"Ours measured on {info['machine']}, one training run of the full model each"
                  f"{_concurrency(results, bits)}. Per-image "
                  "time = backbone feature extraction (timed on query images) + hash encoding of the database "
                  "(batched). The paper's times are for its GPU on CIFAR-10.")
    return {"bits": bits, "ours": numbers, "paper": paper.TABLE6, "machine": info["machine"]}


def _concurrency(results: dict, bits: list[int]) -> str:
    """How the timed training runs shared the machine, from their cell files ("" where not recorded)."""
    runs = [results.get(("table6", "bgan", b)) or {} for b in bits]
    # training runs on the configuration's num_threads when set (the cpu preset: 1), else on the process's
    recorded = {(r["concurrent_cells"], r["config"]["train"]["num_threads"] or r["threads"])
                for r in runs if "concurrent_cells" in r}
    if len(recorded) != 1:
        return ""
    cells, threads = recorded.pop()
    alone = "alone" if cells == 1 else f"{cells} cells at a time (--jobs {cells})"
    return f", trained {alone}, on {threads} thread{'s' if threads > 1 else ''} each"


# ---- figures -------------------------------------------------------------------------------------------


def _figures(doc: Document, out: Path, results: dict, data) -> list[Path]:
    from bganhash.research import figures

    folder, made = out / "figures", []
    doc.heading(2, "Figures")
    figure2 = results.get(("figure2", "curve", 0))
    if figure2:
        made.append(figures.plot_label_precision(figure2["curve"], folder / "figure2.png"))
        doc.image("figures/figure2.png", "Figure 2: label precision of the K1-NN lists and of Algorithm 1's "
                  f"expansion on the training images (features: {figure2['feature_transform']}).")
    for b in _bits_done(results, "table3"):
        curves = {_method_name(m): results[("table3", m, b)]["curves"] for m in ("bgan", *BASELINE_METHODS)
                  if ("table3", m, b) in results}
        made.append(figures.plot_retrieval_curves(curves, folder / f"figure4-{b}bits.png", f"{b} bits"))
        doc.image(f"figures/figure4-{b}bits.png", f"Figure 4 ({b} bits): precision@K up to K = 1,000 and "
                  "precision-recall over Hamming radii, every method.")
    for b in _bits_done(results, "figure5"):
        history = results[("figure5", "convergence", b)]["history"]
        made.append(figures.plot_convergence(history, folder / f"figure5-{b}bits.png", f"{b} bits"))
        doc.image(f"figures/figure5-{b}bits.png", f"Figure 5 ({b} bits): mean losses and validation mAP per "
                  "epoch (validation queries carved from the training images), β stages marked.")
    made += _figure6_and_gallery(doc, folder, results, data)
    return made


def _method_name(method: str) -> str:
    return display_name(method)


def _figure_bits(results: dict) -> int | None:
    done = [b for b in _bits_done(results, "table3") if ("table3", "bgan", b) in results]
    return None if not done else (FIGURE_BITS if FIGURE_BITS in done else max(done))


def _figure6_and_gallery(doc: Document, folder: Path, results: dict, data) -> list[Path]:
    from bganhash.research import figures

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
        panels = {name: _gallery_panel(result["gallery"]["top"], queries, data)
                  for name, result in (("BGAN", bgan), ("ITQ", itq))}
        made.append(figures.plot_gallery(data.dataset.to_array(queries, size=GALLERY_SIDE), panels,
                                         folder / "gallery.png", f"{bits} bits"))
        doc.image("figures/gallery.png", f"Retrieval gallery ({bits} bits): each query, then its top "
                  f"{GALLERY_TOP} database images for BGAN and for ITQ; green: shares a label with the query, "
                  "red: not.")
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
    import scipy
    import sklearn
    import torch

    import bganhash

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__,
            "bganhash": bganhash.__version__, "platform": platform.platform(), "machine": machine_description()}
