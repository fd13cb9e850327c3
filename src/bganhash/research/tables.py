"""The result tables, ours beside the paper's: the one method × bits mAP table (`map_table`) that both
`bganhash baselines` / `train` (`table_markdown`) and the report's Tables 3 and 5 print, and the report's
sections for Tables 2 to 6.

Each report section takes the cell results indexed by role (`bganhash.research.results.by_role`),
adds its heading, table and notes to the document, and returns its numbers for results.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bganhash._io import write_json, write_text
from bganhash.registry import display_name
from bganhash.research import paper
from bganhash.research.document import Document, markdown_table
from bganhash.research.plan import AUTHORS_SUFFIX, BASELINE_METHODS, TABLE2_VARIANTS, TABLE4_VARIANTS
from bganhash.research.protocol import RANKING_RULE, ResultTable
from bganhash.research.results import bits_done, seed_value

LOSS_NAMES = {"N": "ℓN", "C": "ℓC", "A": "ℓA"}
TABLE4_NAMES = {"two_step": "two-step", "tanh": "tanh(βz)", "app": "app(βz)"}


def _fmt(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    return "–" if value is None else f"{value:.3f}"


def _fmt_seeds(result: dict | None, key: str = "map") -> str | None:
    """A result's number as the table prints it: "mean ± std" over its seeds where it ran under several."""
    if result is None:
        return None
    summary = result.get("seeds_summary") or {}
    if summary.get("n_seeds", 1) > 1 and f"{key}_mean" in summary:
        return f"{summary[f'{key}_mean']:.3f} ± {summary[f'{key}_std']:.3f}"
    return None if result.get(key) is None else f"{result[key]:.3f}"


def _seeds_note(results: dict, experiment: str) -> str:
    """What "±" means in a table, where one of its rows ran under several training seeds."""
    counts = {r["seeds_summary"]["n_seeds"] for (name, _, _), r in results.items()
              if name == experiment and "seeds_summary" in r}
    if not counts:
        return ""
    seeds = "/".join(str(n) for n in sorted(counts))
    return (f" Rows with \"±\": mean ± sample standard deviation over {seeds} training seeds (--seed and the "
            "next ones; the split stays --seed's); every seed's value is in results.json.")


def map_table(bits: list[int], ours: Mapping[str, Mapping[int, float | None]], published: paper.Published | None,
              pairs: Mapping[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """A method × bits mAP table: header and rows, ours ("(ours)", "not run" where missing), then the paper's.

    ours: row name -> mAP by bit length; published: the paper's table on the same dataset (None: no
    paper rows); pairs: our row name -> the paper's row for the same method, printed right under ours
    (the paper's other rows follow ours, in its order).
    """
    pairs = pairs or {}
    header = ["Method"] + [f"{b} bits" for b in bits]
    paper_rows = published.rows if published is not None else {}

    def paper_row(row: str) -> list[str]:
        return [f"{row} (paper)"] + [_fmt(published.value(row, b)) for b in bits]

    rows, shown = [], set()
    for name, scores in ours.items():
        rows.append([f"{name} (ours)"] + [_fmt(v) if (v := scores.get(b)) is not None else "not run" for b in bits])
        if pairs.get(name) in paper_rows:
            rows.append(paper_row(pairs[name]))
            shown.add(pairs[name])
    return header, rows + [paper_row(row) for row in paper_rows if row not in shown]


def table_markdown(table: ResultTable) -> str:
    """A result table as Markdown: our rows, then the paper's rows for the same dataset, then notes."""
    published = paper.published(table.dataset, "table3")
    ours = {display_name(method): row for method, row in table.scores.items()}
    notes = [
        "",
        f"mAP@all on {table.dataset} ({table.metadata.get('protocol', 'paper')} split, seed "
        f"{table.metadata.get('seed')}: {table.metadata.get('n_query')} queries, "
        f"{table.metadata.get('n_train')} training images, {table.metadata.get('n_database')} database images). "
        f"Ranking: {RANKING_RULE}.",
        f"Our features: {table.metadata.get('features')}.",
    ]
    if published is not None and published.rows:
        notes.append("The paper's rows used its own features (`+VGG`: VGG-fc7; others hand-crafted) and, "
                     "for CIFAR-10, the official pickles.")
    jpeg = paper.jpeg_copy(table.dataset, table.metadata.get("data"))
    if jpeg is not None:
        notes.append(jpeg.table_note)
    blocks = [markdown_table(*map_table(table.bits, ours, published)), *notes]
    if table.scores_at_1000:  # the measure of the train-test literature; the paper reports none
        at_1000 = {display_name(method): row for method, row in table.scores_at_1000.items()}
        blocks += ["", "The same codes by mAP@1000 (each query's top 1,000 database images):", "",
                   markdown_table(*map_table(table.bits, at_1000, None))]
    return "\n".join(blocks) + "\n"


def write_results(table: ResultTable, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` under `out_dir`, atomically; return both paths."""
    out = Path(out_dir)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_json(json_path, table.to_dict())
    write_text(md_path, table_markdown(table))
    return json_path, md_path


# ---- the report's table sections ---------------------------------------------------------------------


def _paper_note(dataset: str, experiment: str) -> str:
    if paper.published(dataset, experiment) is not None:
        return ""
    return f" The paper reports this table on {', '.join(paper.published_on(experiment))} only, so no paper " \
           "numbers are shown."


def _pair_header(first: str, bits: list[int]) -> list[str]:
    return [first] + [f"{b} bits ({who})" for b in bits for who in ("ours", "paper")]


def _paired_rows(results: dict, experiment: str, variants, bits: list[int], published, *, name, ours,
                 record) -> tuple[list[list[str]], dict]:
    """An ablation table's rows (each variant's cell then the paper's, per bit length) and its numbers."""
    rows, numbers = [], {}
    for row in variants:
        cells, numbers[row] = [name(row)], {}
        paper_row = row.split(AUTHORS_SUFFIX)[0]  # the authors' way sits beside the paper's row too
        for b in bits:
            result = results.get((experiment, row, b))
            value = None if published is None else published.value(paper_row, b)
            instead = None if published is None else published.instead.get(paper_row)
            cells += [ours(row, result), instead or _fmt(value)]
            numbers[row][str(b)] = record(result, value)
        rows.append(cells)
    return rows, numbers


def table2(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = bits_done(results, "table2")
    published = paper.published(dataset, "table2")
    doc.heading(2, f"Table 2: loss components (mAP@all, {_split_name(info)})")
    rows, numbers = _paired_rows(
        results, "table2", TABLE2_VARIANTS, bits, published,
        name=_table2_name, ours=_table2_ours,
        record=lambda result, value: None if result is None else {
            "map": seed_value(result), "distinct_codes": result["distinct_codes"], "n_database": result["n_database"],
            "paper": value, **({"per_seed": result["per_seed"]} if "per_seed" in result else {})})
    doc.table(_pair_header("Losses", bits), rows)
    doc.paragraph("Rows without ℓN have no term tying codes to image similarity: the paper reports them as "
                  "collapsed (\"–\"); we train them and show the measured collapse, the number of distinct codes "
                  "among the database codes." + _paper_note(dataset, "table2"))
    doc.paragraph("Two readings of ℓA. \"Eq. 18\": the encoder descends ℓN + λ1·ℓC only, as the paper's update "
                  "rule says, so ℓA reaches the codes through nothing and ℓN + ℓA trains exactly as ℓN. \"authors' "
                  "way\" (`adversarial_reaches_encoder=true`): the encoder also descends λ2·ℓA through the "
                  "generator, as one loss trains every network in the authors' code; the paper's ℓN + ℓA row "
                  "differs from its ℓN row, so its numbers must come from this reading. The paper's number is "
                  "printed beside both." + _seeds_note(results, "table2"))
    return {"bits": bits, "rows": numbers}


def _table2_name(row: str) -> str:
    """Table 2's row label: its losses, and for rows with ℓA which reading of ℓA it trained."""
    base, authors, _ = row.partition(AUTHORS_SUFFIX)
    name = " + ".join(LOSS_NAMES[part] for part in base.split("+"))
    if "A" not in base.split("+"):
        return name
    return f"{name} (authors' way: ℓA reaches the encoder)" if authors else f"{name} (Eq. 18)"


def _table2_ours(row: str, result: dict | None) -> str:
    if result is None:
        return "not run"
    if "N" in row.split(AUTHORS_SUFFIX)[0].split("+"):
        return _fmt_seeds(result)
    return f"{_fmt(result['map'])}; {result['distinct_codes']} of {result['n_database']} distinct codes"


def table3(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = bits_done(results, "table3")
    published = paper.published(dataset, "table3")
    doc.heading(2, f"Table 3: unsupervised methods on {info['dataset_label']} (mAP@all, {_split_name(info)})")
    methods = ("bgan", *BASELINE_METHODS)
    numbers = {m: {str(b): seed_value(results.get(("table3", m, b))) for b in bits} for m in methods}
    ours = {display_name(m): {b: _fmt_seeds(results.get(("table3", m, b))) for b in bits} for m in methods}
    pairs = {display_name(m): paper.TABLE3_COUNTERPART[m] for m in methods if m in paper.TABLE3_COUNTERPART}
    doc.table(*map_table(bits, ours, published, pairs))
    doc.paragraph("Our baselines run on the same features as our BGAN; each is followed by the paper's row "
                  "for the same method on VGG-fc7 features (\"+VGG\"); the paper's other rows used hand-crafted "
                  "features or their own deep networks. PCAH has no row in the paper." + _seeds_note(results, "table3")
                  + _protocol_caveat(info))
    at_1000 = {m: {str(b): seed_value(results.get(("table3", m, b)), "map_at_1000") for b in bits} for m in methods}
    if any(v is not None for row in at_1000.values() for v in row.values()):
        doc.paragraph(f"The same codes scored by mAP@1000 ({_split_name(info)}), the measure of the wider "
                      "literature (GreedyHash, BiHalf, CIBHash report it, mostly under the train-test protocol: "
                      "the 10,000 test images against the 50,000 training images); the paper reports none:")
        doc.table(*map_table(bits, {display_name(m): {b: _fmt_seeds(results.get(("table3", m, b)), "map_at_1000")
                                                      for b in bits} for m in methods}, None))
    paper_rows = published.rows if published is not None else {}
    per_seed = {m: {str(b): r["per_seed"] for b in bits if "per_seed" in (r := results.get(("table3", m, b)) or {})}
                for m in methods}
    return {"bits": bits, "ours": numbers, "ours_map_at_1000": at_1000,
            "ours_per_seed": {m: runs for m, runs in per_seed.items() if runs},
            "paper": {row: list(values) for row, values in paper_rows.items()}}


def _protocol_caveat(info: dict) -> str:
    """Under the train-test protocol the paper's rows (its own split) sit beside ours for reference only."""
    if info.get("split", {}).get("protocol") != "train-test":
        return ""
    return (" The paper's rows were measured under its own protocol (1,000 queries against 59,000 database "
            "images), not this run's train-test protocol: they are shown for reference, not for comparison.")


def _split_name(info: dict) -> str:
    """The protocol of the run's split, as every table names it."""
    return f"{info.get('split', {}).get('protocol', 'paper')} protocol"


def table4(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = bits_done(results, "table4")
    published = paper.published(dataset, "table4")
    doc.heading(2, f"Table 4: sign approximation (mAP@all, {_split_name(info)})")
    rows, numbers = _paired_rows(
        results, "table4", TABLE4_VARIANTS, bits, published, name=TABLE4_NAMES.__getitem__,
        ours=lambda row, result: _fmt_seeds(result) if result else "not run",
        record=lambda result, value: {"map": seed_value(result), "paper": value,
                                      **({"per_seed": result["per_seed"]} if result and "per_seed" in result else {})})
    doc.table(_pair_header("Activation", bits), rows)
    doc.paragraph("two-step: trained with a fixed smooth activation tanh(z) and without the quantisation term "
                  "(quantization_weight = 0), sign applied only afterwards; app and tanh: β raised stage by stage "
                  "(continuation), with the preset's quantisation weight." + _paper_note(dataset, "table4")
                  + _seeds_note(results, "table4"))
    return {"bits": bits, "rows": numbers}


def table5(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = bits_done(results, "table5")
    published = paper.published(dataset, "table5")
    doc.heading(2, f"Table 5: supervised variant, S from labels (mAP@all, {_split_name(info)})")
    ours = {str(b): (r["map"] if (r := results.get(("table5", "BGAN_s", b))) else None) for b in bits}
    doc.table(*map_table(bits, {"BGAN_s": {b: ours[str(b)] for b in bits}}, published))
    doc.paragraph("BGAN_s: S_ij = +1 when images i and j share a label (training labels only)."
                  + _paper_note(dataset, "table5"))
    paper_rows = published.rows if published is not None else {}
    return {"bits": bits, "ours": ours, "paper": {row: list(values) for row, values in paper_rows.items()}}


def table6(doc: Document, results: dict, dataset: str, info: dict) -> dict:
    bits = [b for b in bits_done(results, "table6") if b]
    doc.heading(2, f"Table 6: training and per-image encoding time ({_split_name(info)})")
    timing = results.get(("table6", "backbone", 0)) or {}
    backbone_ms = timing.get("backbone_ms_per_image")
    extraction = timing.get("extraction")  # the features of every image, extracted once (and cached)
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
        extraction_seconds = extraction["seconds"] if extraction and on_features else None
        rows.append([f"{display_name('bgan')} (ours, {b} bits)",
                     _training_time(result["fit_seconds"], extraction_seconds), f"{total:.2f} ms ({split})"])
        numbers[str(b)] = {"training_seconds": result["fit_seconds"], "extraction_seconds": extraction_seconds,
                           "end_to_end_seconds": result["fit_seconds"] + (extraction_seconds or 0.0),
                           "encode_ms_per_image": result["encode_ms_per_image"],
                           "backbone_ms_per_image": backbone_ms}
    for method, times in paper.TABLE6.items():
        rows.append([f"{method} (paper, GPU)", times["training"], times["testing"]])
    doc.table(["Method", "Training time (end to end)", "Testing time per image"], rows)
    doc.paragraph(f"Ours measured on {info['machine']}, one training run of the full model each"
                  f"{_concurrency(results, bits)}. " + _extraction_note(extraction) + " Per-image "
                  "time = backbone feature extraction (timed on query images) + hash encoding of the database "
                  "(batched). The paper's times are for its GPU on CIFAR-10, end to end (its encoder reads pixels).")
    return {"bits": bits, "ours": numbers, "paper": paper.TABLE6, "machine": info["machine"],
            "extraction": extraction}


def _training_time(training_seconds: float, extraction_seconds: float | None) -> str:
    if extraction_seconds is None:
        return f"{training_seconds / 60:.1f} min"
    total = (training_seconds + extraction_seconds) / 60
    return f"{total:.1f} min = {extraction_seconds / 60:.1f} extraction + {training_seconds / 60:.1f} training"


def _extraction_note(extraction: dict | None) -> str:
    """What Table 6's end-to-end time includes of the feature extraction."""
    if not extraction:
        return ("The features were given precomputed (or the encoder reads pixels), so the training time "
                "leaves out feature extraction: it is not end to end.")
    how = "when they were first extracted (read from the cache in this run)" if extraction["cached"] \
        else "in this run"
    return (f"End to end = feature extraction of all {extraction['n_images']:,} images (frozen backbone, timed "
            f"{how}) + training; extraction is done once and shared by every bit length and variant.")


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


SECTIONS = {"table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6}
