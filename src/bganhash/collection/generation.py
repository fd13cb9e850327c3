"""Writing one generation of an index directory: the model, thumbnails, codes, search structure, items and
report of the next version beside the current one, then the switch of manifest.json to it, and the cleanup."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from PIL import Image

from bganhash._io import atomic_write, file_entry, write_json, write_verified_json
from bganhash._version import __version__
from bganhash.collection.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    collect_garbage,
    model_files,
    referenced_files,
)
from bganhash.datasets.base import progress as progress_bar
from bganhash.hashers.base import saved_files
from bganhash.index import Index
from bganhash.index.rerank import FeatureReducer

__all__ = ["PAUSE_AFTER_ENV", "BuildSummary", "State", "make_thumbnail", "write_generation"]

PAUSE_AFTER_ENV = "BGANHASH_PAUSE_AFTER_FILES"  # crash-safety tests: stall a write after this many files
_THUMBNAIL_QUALITY = 85


@dataclass
class BuildSummary:
    """What one `build_collection` call did; written as its generation's report."""

    path: str
    generation: int
    n_images: int
    added: int
    removed: int
    unchanged: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    trained: bool = False
    seconds: float = 0.0
    backend: str = "flat"
    method: str = ""
    n_bits: int = 0
    trained_on: int = 0  # images the hasher was fitted on (0: an existing or given model)
    distinct_codes: int = 0
    bit_balance: tuple[float, float] = (0.0, 0.0)  # the least and the most often set bit: fraction of 1s
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return document


@dataclass
class State:
    """The current version of an index (or an empty one) that the next generation extends."""

    root: Path
    generation: int
    next_id: int
    method: str | None
    n_bits: int | None
    feature_config: Any
    hasher: Any = None
    model_name: str | None = None
    created: str | None = None
    files: dict[str, Any] = field(default_factory=dict)
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    codes: np.ndarray | None = None
    paths: list[str] = field(default_factory=list)
    stamps: list[str] = field(default_factory=list)
    thumbnails: list[list[int]] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    backend: str = "flat"
    # the second search stage: compact features of the kept images and the reducer that made them (None for an
    # index written before two-stage search, which keeps searching by Hamming distance alone)
    reducer: FeatureReducer | None = None
    vectors: np.ndarray | None = None


def write_generation(out: Path, state: State, kept_rows: np.ndarray, dataset: Any, new_codes: np.ndarray,
                     new_vectors: np.ndarray | None, stamp_of: dict[str, str], summary: BuildSummary,
                     thumbnail_size: int, new_model: bool, started: float) -> None:
    """Write the next generation's files beside the current ones, then switch manifest.json to them;
    completes `summary` (counts, seconds), which is also the generation's report."""
    generation = summary.generation
    after_file = _crash_test_pause()
    collect_garbage(out, keep=referenced_files(out))
    if new_model or state.model_name is None or saved_files(out / state.model_name) is None:
        # a model saved before checksums is saved again, verified (the same arrays: the same codes)
        state.model_name = f"model-{generation:06d}"
        state.hasher.save(out / state.model_name)
        after_file()
    members = list(dataset.locations) if dataset is not None else []
    segments, thumbnails = _kept_thumbnails(state, kept_rows)
    if members:
        segment_name = f"thumbs-{generation:06d}.bin"
        refs = _write_thumbnails(out / segment_name, dataset, thumbnail_size)
        thumbnails += [[len(segments), offset, length] for offset, length in refs]
        segments.append(segment_name)
        after_file()
    ids = np.concatenate([state.ids[kept_rows], np.arange(state.next_id, state.next_id + len(members))])
    old_codes = state.codes[kept_rows] if state.codes is not None else new_codes[:0]
    codes = np.ascontiguousarray(np.concatenate([old_codes, new_codes]), dtype=np.uint8)
    names = {"codes": f"codes-{generation:06d}.safetensors", "items": f"items-{generation:06d}.json",
             "report": f"report-{generation:06d}.json"}
    arrays = {"codes": codes, "ids": ids.astype(np.int64)}
    if state.reducer is not None:
        arrays["vectors"] = np.ascontiguousarray(np.concatenate([state.vectors[kept_rows], new_vectors]))
        arrays.update(state.reducer.arrays())
    with atomic_write(out / names["codes"]) as handle:
        handle.write(safetensors.numpy.save(arrays))
    after_file()
    if state.backend != "flat":  # an approximate backend's structure is built once here, not at every load
        index = Index(int(state.n_bits), state.backend)
        index.add_packed(codes, ids.astype(np.int64))
        names["index"] = f"index-{generation:06d}.bgidx"
        index.save(out / names["index"])
        del index
        after_file()
    write_json(out / names["items"], {
        "paths": [state.paths[r] for r in kept_rows] + members,
        "stamps": [state.stamps[r] for r in kept_rows] + [stamp_of[m] for m in members],
        "thumbnails": thumbnails,
        "segments": segments,
    })
    after_file()
    summary.n_images, summary.added, summary.removed = len(ids), len(members), len(state.ids) - len(kept_rows)
    summary.method, summary.n_bits = state.method, int(state.n_bits)
    _check_codes(codes, summary)
    summary.seconds = round(time.perf_counter() - started, 2)
    write_json(out / names["report"], summary.to_dict())
    after_file()
    files = {}
    for name in [*names.values(), *segments, *model_files(out, state.model_name)]:
        files[name] = state.files.get(name) or file_entry(out / name)
    manifest = _manifest(state, generation, names, dict(sorted(files.items())),
                         next_id=int(state.next_id + len(members)), n_images=len(ids))
    write_verified_json(out / MANIFEST_FILE, manifest)  # the switch: one atomic rename
    collect_garbage(out, keep=set(files))


COLLAPSE_WARNING_BELOW = 0.5  # distinct codes per image under which an index warns that its codes collapse


def _check_codes(codes: np.ndarray, summary: BuildSummary) -> None:
    """A label-free check of the codes: how many are distinct, how balanced the bits are; warnings when they
    collapse (many images sharing few codes rank each other in insertion order)."""
    summary.distinct_codes = int(len(np.unique(codes, axis=0))) if len(codes) else 0
    ones = np.unpackbits(codes, axis=1)[:, : summary.n_bits].mean(axis=0) if len(codes) else np.zeros(1)
    summary.bit_balance = (round(float(ones.min()), 3), round(float(ones.max()), 3))
    if len(codes) and summary.distinct_codes < COLLAPSE_WARNING_BELOW * len(codes):
        summary.warnings.append(
            f"the codes collapse: {summary.distinct_codes:,} distinct codes for {len(codes):,} images; search "
            "re-ranks candidates by feature similarity, but consider --method itq or more --bits")
    dead = int(((ones == 0) | (ones == 1)).sum())
    if dead:
        summary.warnings.append(f"{dead} of {summary.n_bits} bits are the same for every image")


def _kept_thumbnails(state: State, kept_rows: np.ndarray) -> tuple[list[str], list[list[int]]]:
    """The thumbnail segments the kept images still use, and the kept images' refs renumbered to them."""
    used = sorted({state.thumbnails[r][0] for r in kept_rows})
    renumber = {old: new for new, old in enumerate(used)}
    segments = [state.segments[old] for old in used]
    return segments, [[renumber[state.thumbnails[r][0]], *state.thumbnails[r][1:]] for r in kept_rows]


def _manifest(state: State, generation: int, names: dict[str, str], files: dict[str, Any], *, next_id: int,
              n_images: int) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bganhash_version": __version__,
        "generation": generation,
        "created": state.created or now,
        "updated": now,
        "root": str(state.root),
        "n_images": n_images,
        "next_id": next_id,
        "n_bits": int(state.n_bits),
        "method": state.method,
        "feature_config": dataclasses.asdict(state.feature_config),
        "model": state.model_name,
        "backend": state.backend,
        **names,
        "files": files,
    }


def _write_thumbnails(path: Path, dataset: Any, size: int) -> list[tuple[int, int]]:
    """Append a JPEG thumbnail of every dataset image to one file; returns (offset, length) per image."""
    refs = []
    offset = 0
    with atomic_write(path) as handle:
        for position in progress_bar(range(len(dataset)), len(dataset), "thumbnails"):
            data = make_thumbnail(dataset.read_image(position), size)
            handle.write(data)
            refs.append((offset, len(data)))
            offset += len(data)
    return refs


def make_thumbnail(image: np.ndarray, size: int) -> bytes:
    """JPEG bytes of `image` shrunk (never enlarged) to fit in size x size, aspect ratio kept."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=_THUMBNAIL_QUALITY)
    return buffer.getvalue()


def _crash_test_pause() -> Callable[[], None]:
    """A hook called after each file of a write; with $BGANHASH_PAUSE_AFTER_FILES=N it stalls after the N-th,
    so that a test can kill the process there, deterministically."""
    stall_after = int(os.environ.get(PAUSE_AFTER_ENV) or 0)
    written = 0

    def pause() -> None:
        nonlocal written
        written += 1
        if written == stall_after:
            time.sleep(3600)

    return pause
