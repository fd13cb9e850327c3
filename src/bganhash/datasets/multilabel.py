"""Multi-label collections in their official layouts: NUS-WIDE (21 most frequent concepts) and MIRFlickr-25K."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bganhash._validation import InputError, check_positive_int
from bganhash.datasets.base import BadFiles, Dataset, FileSource
from bganhash.datasets.folder import validate_members

NUSWIDE_IMAGE_LIST = Path("ImageList") / "Imagelist.txt"
NUSWIDE_LABELS_DIR = Path("Groundtruth") / "AllLabels"
NUSWIDE_IMAGES_DIR = "Flickr"
NUSWIDE_CONCEPTS = 21  # the paper keeps the 21 most frequent of the 81 concepts
MIRFLICKR_IMAGES_DIR = "mirflickr"
MIRFLICKR_ANNOTATIONS_DIR = "mirflickr25k_annotations_v080"
_MIRFLICKR_IMAGE = re.compile(r"im(\d+)\.jpg")


def load_nuswide(
    data: str | os.PathLike,
    *,
    on_error: str = "skip",
    images_dir: str | os.PathLike | None = None,
    n_concepts: int = NUSWIDE_CONCEPTS,
    validate: bool = False,
) -> Dataset:
    """NUS-WIDE restricted to its `n_concepts` most frequent concepts (ties by name), images with at least one.

    data holds ImageList/Imagelist.txt and Groundtruth/AllLabels/Labels_<concept>.txt; images are under
    images_dir (default data/Flickr). Missing images are bad files; validate=True also decodes each one.
    """
    root = _existing_dir(data, "NUS-WIDE")
    check_positive_int(n_concepts, "n_concepts")
    images_root = Path(images_dir) if images_dir is not None else root / NUSWIDE_IMAGES_DIR
    members = [_relative_image_path(line) for line in _read_lines(root / NUSWIDE_IMAGE_LIST)]
    concepts, matrix = _nuswide_label_matrix(root / NUSWIDE_LABELS_DIR, len(members))
    if len(concepts) < n_concepts:
        raise InputError(f"{root / NUSWIDE_LABELS_DIR} has {len(concepts)} concept files; {n_concepts} are needed")
    counts = matrix.sum(axis=0, dtype=np.int64)
    ranked = sorted(range(len(concepts)), key=lambda c: (-counts[c], concepts[c]))
    top = sorted(ranked[:n_concepts], key=lambda c: concepts[c])
    labels = matrix[:, top]
    keep = np.flatnonzero(labels.any(axis=1))
    return _labelled_files(
        "nuswide",
        root,
        images_root,
        [members[i] for i in keep],
        labels[keep],
        [concepts[c] for c in top],
        on_error,
        validate,
    )


def _relative_image_path(line: str) -> str:
    """An Imagelist.txt entry ('actor\\0001_2124494179.jpg' or 'C:\\ImageData\\Flickr\\actor\\...') relative
    to Flickr/."""
    parts = [part for part in line.replace("\\", "/").split("/") if part]
    lowered = [part.lower() for part in parts]
    if NUSWIDE_IMAGES_DIR.lower() in lowered:
        parts = parts[len(lowered) - lowered[::-1].index(NUSWIDE_IMAGES_DIR.lower()) :]
    elif parts and parts[0].endswith(":"):
        parts = parts[1:]
    return "/".join(parts)


def _nuswide_label_matrix(labels_dir: Path, n_images: int) -> tuple[list[str], np.ndarray]:
    files = sorted(labels_dir.glob("Labels_*.txt")) if labels_dir.is_dir() else []
    if not files:
        raise InputError(f"no Labels_<concept>.txt files in {labels_dir}")
    columns = []
    for file in files:
        values = np.array(_read_lines(file))
        if len(values) != n_images or not np.isin(values, ("0", "1")).all():
            raise InputError(
                f"{file} must hold {n_images} lines of 0 or 1 (one per image list entry); it has {len(values)}"
            )
        columns.append(values == "1")
    return [file.stem[len("Labels_") :] for file in files], np.stack(columns, axis=1).astype(np.uint8)


def load_mirflickr(
    data: str | os.PathLike,
    *,
    on_error: str = "skip",
    images_dir: str | os.PathLike | None = None,
    annotations_dir: str | os.PathLike | None = None,
    validate: bool = False,
) -> Dataset:
    """MIRFlickr-25K: mirflickr/im<id>.jpg and the per-concept id lists; images with at least one label.

    The potential-label lists (<concept>.txt, 1-based ids) are used; the relevant-only `_r1` lists are not.
    """
    root = _existing_dir(data, "MIRFlickr-25K")
    images_root = _existing_dir(
        images_dir if images_dir is not None else root / MIRFLICKR_IMAGES_DIR, "MIRFlickr images"
    )
    annotations = _existing_dir(
        annotations_dir if annotations_dir is not None else root / MIRFLICKR_ANNOTATIONS_DIR, "MIRFlickr annotations"
    )
    ids = sorted(int(m.group(1)) for m in map(_MIRFLICKR_IMAGE.fullmatch, os.listdir(images_root)) if m)
    if not ids:
        raise InputError(f"no im<id>.jpg images in {images_root}")
    concept_files = sorted(
        f for f in annotations.glob("*.txt") if not f.stem.endswith("_r1") and f.stem.lower() != "readme"
    )
    if not concept_files:
        raise InputError(f"no <concept>.txt annotation files in {annotations}")
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(concept_files)), dtype=np.uint8)
    bad, missing = BadFiles(on_error), set()
    for column, file in enumerate(concept_files):
        for line in _read_lines(file):
            if not line.isdigit():
                raise InputError(f"{file} must list 1-based image ids, one per line; found {line!r}")
            image_id = int(line)
            if image_id in row_of:
                labels[row_of[image_id], column] = 1
            elif image_id not in missing:
                missing.add(image_id)
                bad.add(f"im{image_id}.jpg", f"annotated in {file.name} but missing from {images_root}")
    bad_files = bad.report(str(images_root))
    keep = np.flatnonzero(labels.any(axis=1))
    dataset = _labelled_files(
        "mirflickr", root, images_root, [f"im{ids[i]}.jpg" for i in keep], labels[keep],
        [f.stem for f in concept_files], on_error, validate,
    )  # fmt: skip
    dataset.bad_files = bad_files + dataset.bad_files
    return dataset


def _labelled_files(
    name: str, root: Path, images_root: Path, members: list[str], labels: np.ndarray,
    class_names: list[str], on_error: str, validate: bool,
) -> Dataset:  # fmt: skip
    """A multi-label Dataset of the listed files that exist (and decode, with validate=True)."""
    bad = BadFiles(on_error)
    present = []
    for position, member in enumerate(members):
        if (images_root / member).is_file():
            present.append(position)
        else:
            bad.add(member, f"missing from {images_root}")
    bad_files = bad.report(str(images_root))
    if validate:
        good, decode_failures = validate_members(
            FileSource(images_root, [members[i] for i in present]), on_error, str(images_root)
        )
        present, bad_files = [present[i] for i in good], bad_files + decode_failures
    if not present:
        raise InputError(f"none of the {len(members)} labelled {name} images were found under {images_root}")
    kept = [members[i] for i in present]
    return Dataset(
        name, FileSource(images_root, kept), kept, labels=labels[present], class_names=class_names,
        root=root, bad_files=bad_files,
    )  # fmt: skip


def _existing_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{what} folder {path} does not exist")
    return path


def _read_lines(path: Path) -> list[str]:
    """The stripped non-empty lines of a text file (CRLF or LF)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
