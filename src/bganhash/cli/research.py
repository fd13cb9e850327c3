"""Research commands: features, baselines (and the model's train / encode)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from bganhash._io import atomic_write, write_json
from bganhash._validation import InputError
from bganhash.cli._common import (
    data_options,
    dataset_loader,
    emit,
    feature_config,
    parse_bits,
    parse_methods,
    parse_overrides,
    protocol_option,
    resolve_data,
    torchrun_group,
)
from bganhash.codes import pack_codes
from bganhash.datasets import load_dataset
from bganhash.features.cache import feature_cache_path, load_features
from bganhash.pipeline import ImagePipeline
from bganhash.research.protocol import (
    ResultTable,
    fit_bgan,
    map_all_and_at_1000,
    prepare_protocol,
    protocol_metadata,
    run_baselines,
)
from bganhash.research.tables import table_markdown, write_results


@click.command()
@data_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the features to this .npy file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def features(dataset, data, download, features_path, backbone, image_size, precision, flip, seed, out, as_json) -> None:
    """Extract (and cache) pretrained backbone features of a dataset."""
    from bganhash.features.extract import extract_features  # torch

    if features_path is not None:
        raise click.UsageError("--features makes no sense here: this command computes features")
    images = load_dataset(dataset, resolve_data(dataset, data, download))
    config = feature_config(backbone, image_size, precision, flip, dataset=images)
    cache_path = feature_cache_path(images, config.validate())
    cached = cache_path.is_file()
    start = time.perf_counter()
    with torchrun_group() as is_main:  # under torchrun the ranks extract together; rank 0 writes
        matrix = extract_features(images, config, progress=True)
    if not is_main:
        return
    seconds = time.perf_counter() - start
    if out is not None:
        with atomic_write(out) as handle:
            np.save(handle, matrix)
    summary = {"dataset": dataset, "n_images": int(matrix.shape[0]), "n_features": int(matrix.shape[1]),
               "backbone": config.backbone, "image_size": config.image_size, "precision": config.precision,
               "flip": config.flip, "seconds": round(seconds, 2),
               "cached": cached, "out": str(out) if out else None}
    how = f"read from the cache ({cache_path})" if cached else f"in {seconds:.1f} s"
    emit(summary, as_json, f"{matrix.shape[0]} images -> {matrix.shape[1]}-d features "
         f"({config.backbone}, {config.image_size}px, {config.precision}{', with mirror' if config.flip else ''}) {how}"
         + (f"; written to {out}" if out else ""))


@click.command()
@data_options
@click.option("--bits", default="12,24,32,48", show_default=True, callback=parse_bits, help="Code lengths.")
@click.option("--methods", default="lsh,pcah,itq,sh,sph", show_default=True, callback=parse_methods,
              help="Baselines to run.")
@protocol_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for the results table (Markdown + JSON) and the split [default: results/baselines-DATASET].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
def baselines(dataset, data, download, features_path, backbone, image_size, precision, flip, seed, bits, methods,
              protocol, out, as_json) -> None:
    """Run the classic baselines (LSH, PCAH, ITQ, SH, SpH) under the paper's protocol: a Table-3-style report.

    The score is mAP@all (see `bganhash train --help`), with mAP@1000 beside it."""
    data = resolve_data(dataset, data, download)
    features = feature_config(backbone, image_size, precision, flip, load_dataset_once=dataset_loader(dataset, data))
    protocol = prepare_for(dataset, data, features_path, features, seed, protocol=protocol)
    out = out or Path("results") / f"baselines-{dataset}"

    def report(method: str, n_bits: int, score: float) -> None:
        click.echo(f"  {method:>5} {n_bits:>3} bits  mAP@all {score:.4f}", err=True)

    table = run_baselines(protocol, bits, methods, seed=seed, on_cell=report)
    protocol.split.save(out / "split.json")
    json_path, md_path = write_results(table, out, "table3")
    document = {
        **table.to_dict(),
        "files": {"json": str(json_path), "markdown": str(md_path), "split": str(out / "split.json")},
    }
    emit(document, as_json, table_markdown(table) + f"{MAP_EXPLAINED}\nWritten: {md_path}, {json_path}")


MAP_EXPLAINED = ("mAP@all: mean average precision over the whole database ranked by Hamming distance to each "
                 "query, images of the query's class counting as relevant (1.0: every one of them ranked first; "
                 "random codes score about the share of one class).")


@click.command()
@data_options
@click.option("--bits", default="32", show_default=True, callback=parse_bits, help="Code length(s), e.g. 12,24,32,48.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="Compute budget: cpu (hash head on cached features, narrow GAN), paper (the paper's networks, "
                   "for a GPU); auto picks paper when CUDA is available.")
@click.option("--set", "overrides", multiple=True, callback=parse_overrides, metavar="FIELD=VALUE",
              help="Override one configuration field (repeatable), e.g. --set k1=50 --set use_adversarial=false.")
@click.option("--compare", default="lsh,itq", show_default=True, callback=parse_methods,
              help="Baselines trained and scored on the same features and split.")
@protocol_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run folder: models, checkpoints, history and results [default: runs/bgan-DATASET].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in --out (same final codes).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
def train(dataset, data, download, features_path, backbone, image_size, precision, flip, seed, bits, preset, overrides,
          compare, protocol, out, resume, as_json) -> None:
    """Train BGAN under the paper's protocol and score it (mAP@all) next to the baselines.

    mAP@all is the mean, over the query images, of the average precision of the whole database ranked by
    Hamming distance to the query's code, with the images of the query's class as the relevant ones (1.0:
    all of them ranked first; random codes score about the share of one class). Labels only score the
    codes: BGAN trains without them.

    Under `torchrun --nproc_per_node=N -m bganhash train ...` the N processes train each model together
    (DistributedDataParallel, every mini-batch split across them); rank 0 alone scores, writes and prints.
    """
    from bganhash.bgan.config import check_overrides
    from bganhash.bgan.estimator import BGANHasher  # torch
    from bganhash.bgan.launch import launched  # torch

    check_overrides(overrides, preset)  # a bad --set fails here, in one line, before any work
    data = resolve_data(dataset, data, download)
    features = feature_config(backbone, image_size, precision, flip, load_dataset_once=dataset_loader(dataset, data))
    out = out or Path("runs") / f"bgan-{dataset}"
    with launched() as world:  # one process unless started by torchrun
        with world.local_main_first():  # one process per machine extracts and caches the features, then the others
            protocol = prepare_for(dataset, data, features_path, features, seed, progress=world.is_main,
                                   protocol=protocol)
        features = features or protocol.feature_config  # the size picked for the data, when none was asked for
        table = ResultTable(dataset=protocol.dataset.name, bits=list(bits), metadata=protocol_metadata(protocol, seed))
        models = {}
        for n_bits in bits:
            run_dir = out / f"{n_bits}bit"
            hasher = BGANHasher(n_bits, preset=preset, random_state=seed, feature_config=features, **overrides)
            start = time.perf_counter()
            fit_bgan(hasher, protocol, checkpoint_dir=run_dir / "checkpoints", resume=resume, progress=world.is_main)
            if world.is_main:
                score, score_at_1000 = map_all_and_at_1000(hasher, protocol)
                table.add("bgan", n_bits, score, time.perf_counter() - start, score_at_1000)
                models[n_bits] = str(ImagePipeline(hasher, features).save(run_dir / "model"))
                click.echo(f"  BGAN {n_bits:>3} bits  mAP@all {score:.4f}  mAP@1000 {score_at_1000:.4f}  "
                           f"({table.seconds['bgan'][n_bits]:.0f} s)", err=True)
        if not world.is_main:
            return
    baseline_table = run_baselines(protocol, bits, compare, seed=seed)
    for method in compare:
        for n_bits in bits:
            table.add(method, n_bits, baseline_table.scores[method][n_bits], baseline_table.seconds[method][n_bits],
                      baseline_table.scores_at_1000[method][n_bits])
    protocol.split.save(out / "split.json")
    json_path, md_path = write_results(table, out, "results")
    document = {**table.to_dict(), "models": {str(b): p for b, p in models.items()},
                "files": {"json": str(json_path), "markdown": str(md_path)}}
    models_text = "\n".join(f"Model ({b} bits): {p}" for b, p in models.items())
    emit(document, as_json, table_markdown(table) + f"{MAP_EXPLAINED}\n{models_text}\nResults: {md_path}")


def prepare_for(dataset, data, features_path, features, seed, progress: bool = True, protocol: str | None = None):
    """The protocol data a research command works on (split, labels, features)."""
    return prepare_protocol(dataset, data, features_path=features_path, feature_config=features, seed=seed,
                            progress=progress, protocol=protocol)


@click.command()
@click.argument("model", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the codes (.npy): int8 {-1,+1} (n, bits), or uint8 packed with --packed.")
@click.option("--packed", is_flag=True, help="Write packed bits (n, ceil(bits/8)) uint8, faiss's layout.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def encode(model, inputs, out, packed, as_json) -> None:
    """Encode images (files or folders) or a features .npy with a saved hasher: MODEL INPUTS..."""
    with torchrun_group() as is_main:  # under torchrun the ranks extract features together; rank 0 writes
        sources, codes = encode_inputs(ImagePipeline.load(model), inputs)
    if not is_main:
        return
    with atomic_write(out) as handle:
        np.save(handle, pack_codes(codes) if packed else codes)
    sources_path = out.with_suffix(".sources.json")
    write_json(sources_path, sources)
    summary = {"model": str(model), "n_codes": int(codes.shape[0]), "n_bits": int(codes.shape[1]),
               "packed": packed, "out": str(out), "sources": str(sources_path)}
    emit(summary, as_json, f"{codes.shape[0]} codes of {codes.shape[1]} bits written to {out} "
         f"(row order in {sources_path})")


def encode_inputs(pipeline, inputs: tuple[Path, ...]):
    """Codes for a features .npy, or for image files and folders (recursively); returns (sources, codes)."""
    if len(inputs) == 1 and inputs[0].suffix == ".npy":
        features = load_features(inputs[0])
        return [f"{inputs[0]}#{i}" for i in range(len(features))], pipeline.encode_features(features)
    paths: list[str] = []
    for item in inputs:
        if item.is_dir():
            folder = load_dataset("folder", item, labels=False)
            paths.extend(str(Path(folder.root) / location) for location in folder.locations)
        elif item.is_file():
            paths.append(str(item))
        else:
            raise InputError(f"{item}: no such file or folder")
    return paths, pipeline.encode_paths(paths, progress=True)
