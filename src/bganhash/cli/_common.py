"""Pieces every `bganhash` command shares: clean errors, option parsers, dataset options, output."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bganhash._validation import InputError
from bganhash.datasets import DATASETS
from bganhash.features.backbones import list_backbones
from bganhash.features.config import FeatureConfig
from bganhash.registry import BASELINES


class CleanErrors(click.Group):
    """A click group that turns library InputErrors (and missing files) into one-line errors, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


def parse_bits(_ctx, _param, value: str) -> list[int]:
    """Parse "12,24,32" into [12, 24, 32], rejecting anything that is not a positive integer."""
    try:
        bits = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} must be comma-separated integers, e.g. 12,24,32,48") from None
    if not bits or any(b < 1 or b > 1024 for b in bits):
        raise click.BadParameter(f"{value!r}: each bit length must be between 1 and 1024")
    return bits


def parse_methods(_ctx, _param, value: str) -> list[str]:
    """Parse "lsh,itq" into names, checking each against the hasher registry."""
    methods = [m.strip().lower() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BASELINES]
    if unknown or not methods:
        raise click.BadParameter(f"unknown method(s) {unknown or value!r}; choose from {', '.join(BASELINES)}")
    return methods


def parse_overrides(_ctx, _param, values: tuple[str, ...]) -> dict:
    """Parse repeated `--set field=value` into a dict; values are JSON when they parse, else strings."""
    overrides = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} must look like field=value, e.g. k1=50 or lr=0.001")
        try:
            overrides[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name.strip()] = raw
    return overrides


def data_options(command):
    """The options every command that reads a dataset shares."""
    options = [
        click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                     help="Which dataset reader to use; digits is embedded and needs no data."),
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="Folder, zip or tarball holding the dataset (not needed for digits)."),
        click.option("--features", "features_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Precomputed features (.npy, one row per image in dataset order) instead of the backbone."),
        click.option("--backbone", type=click.Choice(list_backbones()), default=None,
                     help="Backbone for feature extraction [default: efficientnet_lite0]."),
        click.option("--image-size", type=click.IntRange(16, 1024), default=None,
                     help="Backbone input size in pixels (default: 224; 128 extracts about 3x faster on a CPU)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the hashers."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def feature_config(backbone: str | None, image_size: int | None):
    """A FeatureConfig from CLI options, leaving unset ones at the library defaults."""
    overrides = {k: v for k, v in {"backbone": backbone, "image_size": image_size}.items() if v is not None}
    return FeatureConfig(**overrides)


def emit(document: dict, as_json: bool, text: str) -> None:
    """Print `document` as JSON on stdout, or `text` for people."""
    click.echo(json.dumps(document, indent=2, default=str) if as_json else text)
