"""Practitioner commands: index a folder of images, search it by image, serve it with a search page."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bganhash._validation import InputError
from bganhash.cli._common import (
    CodeLength,
    backbone_help,
    emit,
    feature_config,
    flip_option,
    precision_option,
    torchrun_group,
)
from bganhash.collection import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MANIFEST_FILE,
    BuildConfig,
    Collection,
    build_collection,
    read_query_file,
)
from bganhash.collection.query import MAX_PIXELS_CEILING
from bganhash.datasets.folder import list_image_files, load_folder
from bganhash.features.backbones import list_backbones
from bganhash.registry import HASHERS

_QUERY_BATCH = 64
_SKIPPED = "skipped:"  # how the scan's reasons start (datasets/folder.py), as against unreadable files
_MAX_QUERY_FILE_BYTES = 256 << 20  # a local query file: the pixel limit is what bounds it


@click.command()
@click.argument("photos", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The index directory to write (e.g. pics.index).")
@click.option("--update", is_flag=True,
              help="Update an existing index: encode only new or changed images, drop the ones that are gone.")
@click.option("--model", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="A saved hasher directory to use instead of training one on the images.")
@click.option("--method", type=click.Choice(HASHERS), default="bgan", show_default=True,
              help="Hasher to train when no --model is given (itq is the quick one).")
@click.option("--bits", type=CodeLength(8, 1024), default=64, show_default=True,
              help="Code length in bits, from 8 to 1024.")
@click.option("--max-train", type=click.IntRange(2), default=10_000, show_default=True,
              help="Train on a random sample of at most this many images.")
@click.option("--backbone", type=click.Choice(list_backbones()), default=None,
              help=backbone_help("Backbone for the features"))
@click.option("--image-size", type=click.IntRange(32, 1024), default=None, help="Backbone input size in pixels.")
@precision_option
@flip_option
@click.option("--thumbnail-size", type=click.IntRange(16, 1024), default=128, show_default=True,
              help="Longest side of the stored thumbnails.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the training.")
@click.option("--backend", default=None, metavar="SPEC",
              help='Search structure: "flat" (exact; the default for a new index), or for very large collections '
                   'an approximate one: "ivf:1024" (1,024 inverted lists, the fastest at high recall; '
                   '"ivf:1024,nprobe=16" scans more of them), "hnsw:32" (a graph with 32 links per image; '
                   '"hnsw:32,ef=256" searches more thoroughly) or "mih:4" (4 hash tables; "mih:4,nflip=2" '
                   "probes further). --update keeps the index's own unless this is given.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index(photos, out, update, model, method, bits, max_train, backbone, image_size, precision, flip, thumbnail_size,
          seed, backend, as_json) -> None:
    """Index the images of folder or zip PHOTOS into one directory: model, codes, paths, thumbnails.

    Method, bits, backbone, image size and precision apply to a new index; --update keeps the index's own
    model (and refuses to start an index that does not exist yet).
    """
    if update and not (out / MANIFEST_FILE).is_file():
        raise InputError(f"--update: {out} holds no index yet; leave out --update to build a new one")
    if model is not None and not model.is_dir():
        raise InputError(f"--model {model}: no such folder; pass the model folder that `bganhash train` printed "
                         "(e.g. runs/bgan-cifar10/32bit/model)")
    config = BuildConfig(method=method, n_bits=bits, max_train=max_train, thumbnail_size=thumbnail_size, seed=seed,
                         backend=backend).validate()  # a bad --backend fails here, before any work
    # None: the model's own, else the size that suits the images (the folder is opened only to pick it)
    features = feature_config(backbone, image_size, precision, flip,
                              load_dataset_once=lambda: load_folder(photos, validate=False))
    with torchrun_group() as is_main:  # under torchrun the ranks extract the features together; rank 0 writes
        summary = build_collection(photos, out, model=model, config=config, update=update, feature_config=features)
    if not is_main:
        return
    unreadable = "".join(_unreadable_line(path, reason) for path, reason in summary.unreadable[:10])
    more = len(summary.unreadable) - 10
    n_skipped = sum(reason.startswith(_SKIPPED) for _, reason in summary.unreadable)
    hasher_text = (f"trained {summary.method} ({summary.n_bits} bits) on {summary.trained_on} images" if summary.trained
                   else f"kept its {summary.method} model ({summary.n_bits} bits)" if summary.generation > 1
                   else f"used the given {summary.method} model ({summary.n_bits} bits)")
    low, high = summary.bit_balance
    quality = (f"\n  codes: {summary.distinct_codes} distinct for {summary.n_images} images; each bit is set for "
               f"{low:.0%}-{high:.0%} of them" + "".join(f"\n  warning: {w}" for w in summary.warnings))
    text = (f"{out}: {summary.n_images} images ({summary.added} added, {summary.removed} removed, "
            f"{summary.unchanged} unchanged) in {summary.seconds:.1f} s; {hasher_text}; "
            + (f"backend {summary.backend}; " if summary.backend != "flat" else "") +
            f"{len(summary.unreadable) - n_skipped} unreadable file(s), {n_skipped} skipped (links out of the "
            "folder, pipes and other non-files)" + unreadable
            + (f"\n  ... and {more} more" if more > 0 else "")
            + (f"\n  the full list is in {out}/report-{summary.generation:06d}.json" if summary.unreadable else "")
            + quality)
    emit(summary.to_dict(), as_json, text)


def _unreadable_line(path: str, reason: str) -> str:
    """One listed file of the index summary: skipped by the scan (not a regular file inside the folder), or
    unreadable (it could not be decoded)."""
    if reason.startswith(_SKIPPED):
        return f"\n  skipped: {path} ({reason[len(_SKIPPED):].strip()})"
    return f"\n  unreadable: {path} ({reason})"


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", type=click.Path(path_type=Path))
@click.option("-k", "k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Results per query.")
@click.option("--candidates", type=click.IntRange(1), default=None,
              help="Nearest codes re-ranked by feature similarity (the first of the two search stages) "
                   "[default: 200, or one per 50 indexed images when more, at most 1,000].")
@click.option("--absolute", is_flag=True,
              help="Print each result's full path (root joined with the path) instead of the path under the root.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON record per query, one per line (JSON Lines), as each batch of queries is done.")
def search(index_dir, query, k, candidates, absolute, as_json) -> None:
    """Find the K images of INDEX_DIR nearest to QUERY (an image, or a folder of images: each is searched).

    The --candidates nearest codes (at least K) are found with the backend the index was built with (exact for
    "flat", approximate for ivf, hnsw and mih), then re-ranked by cosine similarity of the compact features
    the index stores. Each result shows its Hamming distance (how many bits of its code differ from the
    query's), that cosine similarity (1.0: the same picture) and its path under the indexed folder, which
    the output names. A JSON record holds "path" (under "root") and "file" (the full path; null in a zip).
    """
    with Collection.load(index_dir) as collection:
        queries, skipped = _query_images(query, collection.feature_config.image_size)
        context = {"index": str(index_dir), "root": collection.root, "backend": collection.backend, "k": k,
                   "n_bits": collection.n_bits, "reranked": collection.reranked}
        if candidates is not None:
            collection.candidates = candidates
        if not as_json:
            click.echo(_search_legend(context))
        for start in range(0, len(queries), _QUERY_BATCH):
            batch = queries[start:start + _QUERY_BATCH]
            matches = collection.search_images([image for _, image in batch], k)
            for (name, _), rows in zip(batch, matches):
                results = [{"rank": rank, **m.to_dict(), "file": _full_path(collection.root, m.path)}
                           for rank, m in enumerate(rows, 1)]
                click.echo(json.dumps({"query": name, **context, "results": results}) if as_json
                           else _result_lines(name, results, context, absolute))
    for name, reason in skipped:
        click.echo(json.dumps({"query": name, **context, "skipped": reason}) if as_json
                   else f"skipped {name}: {reason}")


def _search_legend(context: dict) -> str:
    """What the columns of the text output mean, printed once above the results."""
    legend = (f"{context['index']}: images under {context['root']}; hamming = bits of the {context['n_bits']}-bit "
              "code that differ from the query's")
    if context["reranked"]:
        return legend + "; cosine = similarity of the stored features (1.000: the same picture), the order"
    return legend + (" (this index predates re-ranking: results are ordered by Hamming distance alone; rebuild it "
                     "to re-rank by similarity)")


def _result_lines(name: str, results: list[dict], context: dict, absolute: bool) -> str:
    where = "full path" if absolute else f"path under {context['root']}"
    lines = [name, f"  rank  hamming  {'cosine' if context['reranked'] else '      '}  {where}"]
    for result in results:
        score = "" if result["score"] is None else f"{result['score']:.3f}"
        path = result["file"] if absolute and result["file"] else result["path"]
        lines.append(f"  {result['rank']:>4}  {result['distance']:>7}  {score:>6}  {path}  (id {result['id']})")
    return "\n".join(lines)


def _full_path(root: str, path: str) -> str | None:
    """The file of an indexed image when the root is a folder (None for a member of a zip)."""
    return str(Path(root) / path) if Path(root).is_dir() else None


def _query_images(query: Path, min_side: int) -> tuple[list, list]:
    """(name, image) for a query file, or for each readable image of a query folder, plus the skipped ones.

    A local file is the user's own, so it may be as large as Pillow allows (not just an upload's 50 MP); it is
    reduced as it is decoded, its shorter side to no less than `min_side` (the backbone's input size)."""
    if not query.exists():
        raise InputError(f"the query {query} does not exist")
    limits = {"min_side": min_side, "max_pixels": MAX_PIXELS_CEILING, "max_bytes": _MAX_QUERY_FILE_BYTES}
    if query.is_file():
        return [(str(query), read_query_file(query, **limits))], []
    images, skipped = [], []
    for member in list_image_files(query):
        try:
            images.append((str(query / member), read_query_file(query / member, **limits)))
        except InputError as exc:
            skipped.append((str(query / member), str(exc)))
    if not images:
        raise InputError(f"no readable images in the query folder {query}")
    return images, skipped


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the service to your network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port to listen on (0: any free port).")
@click.option("--max-upload-bytes", type=click.IntRange(1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest accepted upload.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help=f"Largest accepted image, in pixels (decompression-bomb guard; at most {MAX_PIXELS_CEILING:,}, "
                   "Pillow's limit).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
              help="Another name the service answers to in the Host header, besides the loopback names and "
                   "--host (repeatable; '*.example.com' a domain, '*' any: only behind a proxy that checks it). "
                   "Other names get 400, against DNS rebinding.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Torch threads for the backbone (default: up to 4).")
def serve(index_dir, host, port, max_upload_bytes, max_pixels, allowed_hosts, threads) -> None:
    """Serve INDEX_DIR: a search page at /, its duplicates at /duplicates, a JSON API (POST /search,
    GET /images/ID, /thumbnails/ID, /duplicates.json) and /docs.

    The service follows `bganhash index --update`: it notices the new generation within a second or two,
    loads it beside the one it serves, and switches to it between requests."""
    if not 1 <= max_pixels <= MAX_PIXELS_CEILING:  # before the slow imports, in the option's own words
        raise InputError(f"--max-pixels {max_pixels:,} is out of range: give 1 to {MAX_PIXELS_CEILING:,} "
                         "(Pillow's decompression-bomb limit, which bganhash keeps)")
    from bganhash.serve.app import serve as run_service  # fastapi, uvicorn and torch

    run_service(index_dir, host, port, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                torch_threads=threads, allowed_hosts=list(allowed_hosts))
