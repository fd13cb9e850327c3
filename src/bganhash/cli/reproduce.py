"""`bganhash reproduce`: the paper's experiments (Tables 2-6, Figures 2, 4-6, a gallery) in one resumable run."""

from __future__ import annotations

from pathlib import Path

import click

from bganhash._system import usable_cpus
from bganhash.cli._common import (
    data_options,
    dataset_loader,
    emit,
    feature_config,
    parse_bits,
    parse_overrides,
    resolve_data,
)
from bganhash.research.plan import ReproduceSettings, parse_only


def _parse_only(_ctx, _param, value: str | None):
    try:
        return parse_only(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@data_options
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Report folder; re-running with the same --out resumes [default: results/reproduce-DATASET].")
@click.option("--only", default=None, callback=_parse_only, metavar="EXPERIMENTS",
              help="Comma-separated subset: table2, table3, table4, table5, table6, figure2, figure5 "
                   "(figure4, figure6 and gallery come with table3).")
@click.option("--bits", default=None, callback=lambda c, p, v: None if v is None else parse_bits(c, p, v),
              help="Code lengths instead of each table's own, e.g. 32 or 24,32.")
@click.option("--quick", is_flag=True, help="Smoke run: a subset of the split, one bit length, one epoch per "
                                            "beta stage. The report says so loudly.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="BGAN compute budget (see `bganhash train --help`).")
@click.option("--set", "overrides", multiple=True, callback=parse_overrides, metavar="FIELD=VALUE",
              help="Override one BGAN configuration field for every variant (repeatable).")
@click.option("--split", "split_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Use this saved split (split.json) instead of drawing the paper's.")
@click.option("--protocol", type=click.Choice(["paper", "train-test"]), default=None,
              help="Split: paper (CIFAR-10: 1,000 queries, 10,000 training images, 59,000 database) or train-test "
                   "(the 10,000 test images against the 50,000 training images, the protocol of the mAP@1000 "
                   "literature) [default: the dataset's own, paper for CIFAR-10].")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Training seeds of the headline rows (Table 3's BGAN, Table 2's N+C+A, Table 4's app), "
                   "reported as mean ± std: --seed and the next ones [default: 3; 1 with --quick].")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Cells run at once, each in its own process on one thread [default: the usable CPU cores].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def reproduce(dataset, data, download, features_path, backbone, image_size, precision, flip, seed, out, only, bits,
              quick, preset, overrides, split_path, protocol, seeds, jobs, as_json) -> None:
    """Run the paper's protocol and write a self-contained report (Markdown, HTML, JSON) under --out."""
    from bganhash.bgan.config import check_overrides
    from bganhash.research.runner import reproduce as run_reproduction  # numba, scikit-learn: ~1 s at CLI start

    check_overrides(overrides, preset)  # a bad --set fails here, in one line, before any work
    data = resolve_data(dataset, data, download)
    settings = ReproduceSettings(
        dataset=dataset, data=None if data is None else str(Path(data).resolve()),
        features_path=None if features_path is None else str(Path(features_path).resolve()),
        seed=seed, preset=preset, quick=quick, overrides=overrides,
        split_path=None if split_path is None else str(Path(split_path).resolve()),
        feature_config=feature_config(backbone, image_size, precision, flip,
                                      load_dataset_once=dataset_loader(dataset, data)),
        only=only,
        bits=None if bits is None else tuple(bits), protocol=protocol, seeds=seeds)
    out = out or Path("results") / f"reproduce-{dataset}"
    summary = run_reproduction(settings, out, log=lambda message: click.echo(message, err=True),
                               jobs=jobs or usable_cpus())
    emit(summary, as_json, f"{summary['cells']} cells ({summary['computed']} computed now, {summary['skipped']} "
         f"kept) in {summary['seconds']:.0f} s. Report: {summary['files']['report.md']}")
