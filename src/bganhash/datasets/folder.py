"""A user's own images: any folder or zip, recursive, labelled by first-level sub-folder when there are some."""

from __future__ import annotations

import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np

from bganhash._validation import InputError
from bganhash.datasets.base import BadFiles, Dataset, FileSource, ZipSource, progress
from bganhash.datasets.images import IMAGE_EXTENSIONS, image_problem, is_image_name

_IGNORED_FOLDERS = {"__MACOSX"}


def list_image_files(path: str | os.PathLike) -> list[str]:
    """Sorted '/'-separated paths of the image files in a directory tree or zip, hidden entries skipped, and
    so are links that lead outside the folder and anything that is not a regular file (see `scan_image_files`,
    which also says what it skipped and why)."""
    return scan_image_files(path)[0]


def scan_image_files(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files of a directory tree or zip (sorted '/'-separated paths), and (path, reason) for each
    image-named entry skipped: a symbolic link is followed only when it resolves inside the folder (a link
    to a folder is not descended: what it holds inside the root is indexed under its own path), and named
    pipes, devices and sockets are never opened (reading a pipe would block forever)."""
    path = Path(path)
    if path.is_dir():
        found, skipped = _walk_directory(path)
        return sorted(found), sorted(skipped)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
        return sorted(name for name in names if _visible(name) and is_image_name(name)), []
    if path.exists():
        raise InputError(f"{path} is neither a folder nor a zip archive of images")
    raise InputError(f"{path} does not exist")


def _walk_directory(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    found: list[str] = []
    skipped: list[tuple[str, str]] = []
    resolved_root = root.resolve()
    for directory, subdirs, files in os.walk(root):  # does not descend into links to folders
        relative = Path(directory).relative_to(root)
        linked = [d for d in subdirs if os.path.islink(os.path.join(directory, d))]
        skipped += [((relative / d).as_posix(), "skipped: a link to a folder (links to folders are not followed)")
                    for d in linked if not d.startswith(".")]
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in _IGNORED_FOLDERS and d not in linked]
        for name in files:
            if not is_image_name(name):
                continue
            problem = _entry_problem(Path(directory) / name, resolved_root)
            if problem is None:
                found.append((relative / name).as_posix())
            else:
                skipped.append(((relative / name).as_posix(), problem))
    return found, skipped


def _entry_problem(entry: Path, resolved_root: Path) -> str | None:
    """Why the directory entry `entry` is not indexed (None when it is a regular file inside the root)."""
    try:
        if entry.is_symlink() and not entry.resolve().is_relative_to(resolved_root):
            return "skipped: a symbolic link to a file outside the folder"
        mode = entry.stat().st_mode  # follows a link inside the root
    except (OSError, RuntimeError) as exc:  # a dangling or looping link, or the entry vanished
        return f"skipped: cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
        return f"skipped: {kind}, not a regular file"
    return None


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
        try:
            problem = image_problem(source.raw(position))
        except InputError as exc:  # replaced by a pipe or removed since the scan
            problem = str(exc)
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

