"""Practitioner commands: index a folder of images, search it by image, serve it with a search page."""

from __future__ import annotations

from pathlib import Path

import click

from bganhash._validation import InputError
from bganhash.cli._common import emit, feature_config
from bganhash.collection import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    BuildConfig,
    Collection,
    build_collection,
    read_query_file,
)
from bganhash.datasets.folder import list_image_files
from bganhash.index.rerank import DEFAULT_CANDIDATES
from bganhash.registry import HASHERS

_QUERY_BATCH = 64


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
@click.option("--bits", type=click.IntRange(8, 1024), default=64, show_default=True, help="Code length.")
@click.option("--max-train", type=click.IntRange(2), default=10_000, show_default=True,
              help="Train on a random sample of at most this many images.")
@click.option("--backbone", default=None, help="Backbone for the features (default: efficientnet_lite0).")
@click.option("--image-size", type=click.IntRange(32, 1024), default=None, help="Backbone input size in pixels.")
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
def index(photos, out, update, model, method, bits, max_train, backbone, image_size, thumbnail_size, seed,
          backend, as_json) -> None:
    """Index the images of folder or zip PHOTOS into one directory: model, codes, paths, thumbnails.

    Method, bits and backbone apply to a new index; --update keeps the index's own model.
    """
    config = BuildConfig(method=method, n_bits=bits, max_train=max_train, thumbnail_size=thumbnail_size, seed=seed,
                         backend=backend).validate()  # a bad --backend fails here, before any work
    features = feature_config(backbone, image_size) if backbone or image_size else None  # None: the model's own
    summary = build_collection(photos, out, model=model, config=config, update=update, feature_config=features)
    unreadable = "".join(f"\n  unreadable: {path} ({reason})" for path, reason in summary.unreadable[:10])
    more = len(summary.unreadable) - 10
    hasher_text = (f"trained {summary.method} ({summary.n_bits} bits) on {summary.trained_on} images" if summary.trained
                   else f"kept its {summary.method} model ({summary.n_bits} bits)" if summary.generation > 1
                   else f"used the given {summary.method} model ({summary.n_bits} bits)")
    low, high = summary.bit_balance
    quality = (f"\n  codes: {summary.distinct_codes} distinct for {summary.n_images} images; each bit is set for "
               f"{low:.0%}-{high:.0%} of them" + "".join(f"\n  warning: {w}" for w in summary.warnings))
    text = (f"{out}: {summary.n_images} images ({summary.added} added, {summary.removed} removed, "
            f"{summary.unchanged} unchanged) in {summary.seconds:.1f} s; {hasher_text}; "
            + (f"backend {summary.backend}; " if summary.backend != "flat" else "") +
            f"{len(summary.unreadable)} unreadable file(s)" + unreadable
            + (f"\n  ... and {more} more" if more > 0 else "")
            + (f"\n  the full list is in {out}/report-{summary.generation:06d}.json" if summary.unreadable else "")
            + quality)
    emit(summary.to_dict(), as_json, text)


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", type=click.Path(path_type=Path))
@click.option("-k", "k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Results per query.")
@click.option("--candidates", type=click.IntRange(1), default=DEFAULT_CANDIDATES, show_default=True,
              help="Nearest codes re-ranked by feature similarity (the first of the two search stages).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def search(index_dir, query, k, candidates, as_json) -> None:
    """Find the K images of INDEX_DIR nearest to QUERY (an image, or a folder of images: each is searched).

    The --candidates nearest codes (at least K) are found with the backend the index was built with (exact for
    "flat", approximate for ivf, hnsw and mih), then re-ranked by cosine similarity of the compact features
    the index stores; the output shows both the Hamming distance and that similarity.
    """
    queries, skipped = _query_images(query)
    with Collection.load(index_dir) as collection:
        backend, root, reranked = collection.backend, collection.root, collection.reranked
        collection.candidates = candidates
        found = []
        for start in range(0, len(queries), _QUERY_BATCH):
            batch = queries[start:start + _QUERY_BATCH]
            matches = collection.search_images([image for _, image in batch], k)
            found += [(name, rows) for (name, _), rows in zip(batch, matches)]
    document = {"index": str(index_dir), "root": root, "backend": backend, "k": k, "reranked": reranked,
                "queries": [{"query": name, "results": [m.to_dict() for m in rows]} for name, rows in found],
                "skipped": [{"query": name, "reason": reason} for name, reason in skipped]}
    lines = [] if reranked else ["(this index predates re-ranking: results are ordered by Hamming distance alone; "
                                 "rebuild it to re-rank by similarity)"]
    for name, rows in found:
        lines += [name, f"  rank  hamming  {'cosine' if reranked else '      '}  path (under {root})"]
        for rank, m in enumerate(rows, 1):
            score = "" if m.score is None else f"{m.score:.3f}"
            lines.append(f"  {rank:>4}  {m.distance:>7}  {score:>6}  {m.path}  (id {m.id})")
    lines += [f"skipped {name}: {reason}" for name, reason in skipped]
    emit(document, as_json, "\n".join(lines))


def _query_images(query: Path) -> tuple[list, list]:
    """(name, image) for a query file, or for each readable image of a query folder, plus the skipped ones."""
    if not query.exists():
        raise InputError(f"the query {query} does not exist")
    if query.is_file():
        return [(str(query), read_query_file(query))], []
    images, skipped = [], []
    for member in list_image_files(query):
        try:
            images.append((str(query / member), read_query_file(query / member)))
        except InputError as exc:
            skipped.append((str(query / member), str(exc)))
    if not images:
        raise InputError(f"no readable images in the query folder {query}")
    return images, skipped


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the service to your network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-upload-bytes", type=click.IntRange(1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest accepted upload.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest accepted image, in pixels (decompression-bomb guard).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Torch threads for the backbone (default: up to 4).")
def serve(index_dir, host, port, max_upload_bytes, max_pixels, threads) -> None:
    """Serve INDEX_DIR: a search page at /, a JSON API (POST /search, GET /images/ID, /thumbnails/ID) and /docs."""
    from bganhash.serve.app import serve as run_service  # fastapi, uvicorn and torch

    run_service(index_dir, host, port, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                torch_threads=threads)
