"""A user's own images: any folder or zip, recursive, labelled by first-level sub-folder when there are some."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from bganhash._validation import InputError
from bganhash.datasets.base import BadFiles, Dataset, FileSource, ZipSource, progress
from bganhash.datasets.images import IMAGE_EXTENSIONS, image_problem, is_image_name

_IGNORED_FOLDERS = {"__MACOSX"}


def list_image_files(path: str | os.PathLike) -> list[str]:
    """Sorted '/'-separated paths of the image files in a directory tree or zip, hidden entries skipped."""
    path = Path(path)
    if path.is_dir():
        return sorted(_walk_directory(path))
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
        return sorted(name for name in names if _visible(name) and is_image_name(name))
    if path.exists():
        raise InputError(f"{path} is neither a folder nor a zip archive of images")
    raise InputError(f"{path} does not exist")


def _walk_directory(root: Path) -> list[str]:
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in _IGNORED_FOLDERS]
        relative = Path(directory).relative_to(root)
        found += [(relative / f).as_posix() for f in files if is_image_name(f)]
    return found


def _visible(member: str) -> bool:
    parts = member.split("/")
    return not any(part.startswith(".") or part in _IGNORED_FOLDERS for part in parts)


def open_source(path: str | os.PathLike, members: list[str]) -> FileSource | ZipSource:
    """The image source for `members` of a folder or zip."""
    return FileSource(path, members) if Path(path).is_dir() else ZipSource(path, members)


def validate_members(source: FileSource | ZipSource, on_error: str, where: str) -> tuple[list[int], list]:
    """Decode every member cheaply; return the usable positions and the (location, reason) of the others."""
    bad = BadFiles(on_error)
    good = []
    for position in progress(range(len(source)), len(source), f"checking {where}"):
        problem = image_problem(source.raw(position))
        if problem is None:
            good.append(position)
        else:
            bad.add(source.members[position], problem)
    return good, bad.report(where)


def load_folder(
    path: str | os.PathLike,
    *,
    on_error: str = "skip",
    labels: bool | None = None,
    validate: bool = True,
) -> Dataset:
    """Every image under `path` (folder or zip), checked at scan time.

    labels: None labels by first-level sub-folder when every image lives in one (a single folder wrapping
    everything is looked through), True requires that layout, False reads the images unlabelled.
    """
    members = list_image_files(path)
    if not members:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}")
    source = open_source(path, members)
    bad_files: list = []
    if validate:
        good, bad_files = validate_members(source, on_error, str(path))
        if not good:
            raise InputError(f"none of the {len(members)} image files in {path} could be read")
        source = open_source(path, [members[i] for i in good])
    folders = _label_folders(source.members, labels, path)
    if folders is None:
        return Dataset("folder", source, source.members, root=path, bad_files=bad_files)
    class_names = sorted(set(folders))
    label_ids = np.searchsorted(np.array(class_names), np.array(folders)).astype(np.int64)
    return Dataset(
        "folder", source, source.members, labels=label_ids, class_names=class_names, root=path, bad_files=bad_files
    )


def _label_folders(members: list[str], labels: bool | None, path) -> list[str] | None:
    """The class folder name of each member, or None when the collection is read unlabelled."""
    if labels is False:
        return None
    parts = [member.split("/") for member in members]
    depth = 0
    while all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1  # one folder wrapping everything (common in zips) is not a class
    if all(len(p) > depth + 1 for p in parts):
        return [p[depth] for p in parts]
    if labels:
        loose = next(m for m, p in zip(members, parts) if len(p) <= depth + 1)
        raise InputError(f"labels=True needs every image in a class sub-folder of {path}; {loose} is not")
    if any(len(p) > depth + 1 for p in parts):
        warnings.warn(
            f"{path} has images both at its top level and in sub-folders; reading it unlabelled", stacklevel=3
        )
    return None

