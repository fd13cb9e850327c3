"""The on-disk format of an image collection: one index directory, its manifest and generations.

Layout of `my.index/` (every file immutable once written, named by the generation that wrote it):

    manifest.json             the pointer: format, version, generation, the sha256 of every file below and
                              (format version 3 on) of its own content, so that no field can change unseen
    model-000001/             the saved hasher (JSON + safetensors)
    codes-000002.safetensors  packed codes and their ids
    index-000002.bgidx        with an approximate backend (ivf, hnsw, mih): the saved bganhash.Index, structure included
    items-000002.json         id -> path relative to the collection root, a change stamp, thumbnail location
    thumbs-000001.bin         JPEG thumbnails, concatenated (one segment per generation that added images)
    report-000002.json        files that could not be read, and what the update changed

An update writes the files of a new generation beside the old ones, then replaces manifest.json in one
atomic rename: a process killed at any point leaves the previous complete version loadable. Files no
manifest refers to are deleted by the next successful write.

The manifest names the search backend ("flat", exact, unless the index was built with e.g. "hnsw:32"; format
version 1 had no backend and is read as "flat"). Manifests of versions 1 and 2 have no checksum of their own:
they load with a warning that they are unverified, and the next update rewrites them (and the model) verified.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bganhash._io import CHECKSUM_KEY, check_json_checksum, file_sha256, read_json, read_versioned_json
from bganhash._validation import InputError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "GENERATION_FILE", "LOCK_FILE", "MANIFEST_FILE", "WHAT",
           "collect_garbage", "file_sha256", "is_ours", "model_files", "read_manifest", "referenced_files",
           "verify_files", "writer_lock"]

FORMAT_NAME = "bganhash-collection"
# 2: the manifest names the search backend, and may list an index-NNNNNN.bgidx; 3: it checksums itself
FORMAT_VERSION = 3
VERIFIED_SINCE = 3
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
GENERATION_FILE = re.compile(r"^(model|codes|items|thumbs|report|index)-(\d{6})(\.[a-z]+)?$")
WHAT = "a bganhash index"  # what its files are part of, in the errors of bganhash._io's readers
_INTEGERS = {"generation": 1, "n_bits": 1, "next_id": 0}  # each must be an int >= this
_STRINGS = ("method", "root", "model", "codes", "items", "report")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of index directory `directory`, checked for our format, a readable version, the type of
    every field and its own checksum (format version 3 on; older ones load unverified, with a warning)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise InputError(f"{directory} is not an index directory (build one with `bganhash index`)")
    manifest = read_versioned_json(path, FORMAT_NAME, FORMAT_VERSION, "a bganhash index (its manifest)")
    required = ("generation", "n_bits", "method", "root", "feature_config", "model", "codes", "items", "report",
                "files", "next_id")
    missing = [key for key in required if key not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise InputError(f"{path} is corrupted: it lacks {missing or ['files']}")
    names = [manifest[key] for key in ("model", "codes", "items", "report", "index") if key in manifest]
    if not all(isinstance(name, str) and GENERATION_FILE.match(name) for name in names) or not all(
            isinstance(entry, dict) and GENERATION_FILE.match(_top_name(name))
            for name, entry in manifest["files"].items()):
        raise InputError(f"{path} is corrupted: it names files that are not the index's own")
    _check_types(manifest, path)
    check_json_checksum(manifest, path, required=manifest["format_version"] >= VERIFIED_SINCE)
    return manifest


def _check_types(manifest: dict[str, Any], path: Path) -> None:
    """InputError naming the first field of the wrong type, or a file the manifest names but does not checksum."""
    for key, minimum in _INTEGERS.items():
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InputError(f"{path} is corrupted: {key}={value!r} must be an integer >= {minimum}")
    for key in (*_STRINGS, "backend"):
        if key in manifest and not isinstance(manifest[key], str):
            raise InputError(f"{path} is corrupted: {key}={manifest[key]!r} must be a string")
    if not isinstance(manifest["feature_config"], dict):
        raise InputError(f"{path} is corrupted: feature_config must be an object")
    for name, entry in manifest["files"].items():
        if not (isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise InputError(f"{path} is corrupted: its entry for {name} is not a size and a checksum")
    named = [manifest[key] for key in ("codes", "items", "report", "index") if key in manifest]
    named += [f"{manifest['model']}/{name}" for name in ("hasher.json", "hasher.safetensors")]
    unlisted = [name for name in named if name not in manifest["files"]]
    if unlisted:
        raise InputError(f"{path} is corrupted: it does not checksum {unlisted[0]}, which it names")


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its recorded size and sha256."""
    for name, expected in manifest["files"].items():
        path = directory / name
        if not _inside(directory, path) or not path.is_file():
            raise InputError(f"{directory} is incomplete: {name} is missing")
        if path.stat().st_size != expected.get("bytes") or file_sha256(path) != expected.get("sha256"):
            raise InputError(f"{path} is corrupted or foreign (its checksum does not match the manifest); "
                             "rebuild the index with `bganhash index`")
    if CHECKSUM_KEY not in manifest:  # an unverified manifest of an earlier version: does it cover the thumbnails?
        segments = read_json(directory / manifest["items"], WHAT).get("segments", [])
        if not isinstance(segments, list) or not all(isinstance(s, str) and s in manifest["files"] for s in segments):
            raise InputError(f"{directory / MANIFEST_FILE} is corrupted: it does not checksum every thumbnail file")


def model_files(out: Path, model_name: str) -> list[str]:
    """The files of the saved model `model_name` (a directory), relative to `out`."""
    directory = out / model_name
    return sorted(p.relative_to(out).as_posix() for p in directory.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def _top_name(name: str) -> str:
    return name.split("/", 1)[0]


def is_ours(name: str) -> bool:
    """A generation file or a temporary left by an interrupted atomic write."""
    return bool(GENERATION_FILE.match(name)) or (name.startswith(".") and name.endswith(".tmp"))


def referenced_files(out: Path) -> set[str]:
    """Files the current manifest refers to (empty when there is none or it is unreadable)."""
    try:
        return set(read_manifest(out)["files"])
    except InputError:
        return set()


def collect_garbage(out: Path, keep: set[str]) -> None:
    """Delete generation files and leftover temporaries that no manifest refers to."""
    kept_tops = {_top_name(name) for name in keep}
    for entry in out.iterdir():
        if is_ours(entry.name) and entry.name not in kept_tops:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """One writer per index directory at a time (an advisory lock, released if the process dies)."""
    import fcntl  # POSIX only: imported here so that the format can be read anywhere

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out} is being written by another process; try again when it has finished") from None
        yield


def _inside(directory: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())
