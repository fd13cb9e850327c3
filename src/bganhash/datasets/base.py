"""The one dataset interface: images from an in-memory array, a folder or a zip, with optional labels."""

from __future__ import annotations

import abc
import hashlib
import io
import os
import stat
import threading
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from bganhash._progress import progress
from bganhash._validation import InputError, check_positive_int
from bganhash.datasets.images import decode_image, resize_square

ON_ERROR_CHOICES = ("skip", "raise")
DIGEST_BYTES = 16
_REPORTED_BAD_FILES = 5


# ---------------------------------------------------------------------------------------------- sources


class ImageSource(Protocol):
    """Where the pixels live; positions index the source, not a (possibly subset) Dataset."""

    def __len__(self) -> int: ...

    def read(self, position: int, min_side: int | None = None) -> np.ndarray: ...

    def dense(self) -> np.ndarray | None:
        """All images as one (N, H, W, 3) uint8 array when the source keeps them in memory, else None."""

    def fingerprint(self, positions: np.ndarray) -> str: ...

    def digest(self, position: int) -> bytes: ...

    def side(self, position: int) -> int: ...


class ArraySource:
    """Images held in one (N, H, W, 3) uint8 array (digits, the CIFAR pickles)."""

    def __init__(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"images must be a (N, H, W, 3) uint8 array; got {images.dtype} {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def read(self, position: int, min_side: int | None = None) -> np.ndarray:
        return self.images[position]

    def dense(self) -> np.ndarray:
        return self.images

    def side(self, position: int) -> int:
        return int(min(self.images.shape[1:3]))

    def digest(self, position: int) -> bytes:
        image = np.ascontiguousarray(self.images[position])
        return hashlib.sha256(f"pixels{image.shape}".encode() + image.tobytes()).digest()[:DIGEST_BYTES]

    def fingerprint(self, positions: np.ndarray) -> str:
        digest = hashlib.sha256(f"array{self.images.shape[1:]}".encode())
        digest.update(np.ascontiguousarray(self.images[positions]).tobytes())
        return digest.hexdigest()


class _MemberSource(abc.ABC):
    """Images stored one file per member; subclasses say how to fetch a member's raw bytes or path."""

    members: list[str]

    def __len__(self) -> int:
        return len(self.members)

    @abc.abstractmethod
    def raw(self, position: int) -> Path | bytes:
        """The member's path (folders) or bytes (archives), as the decoder takes them."""

    def read(self, position: int, min_side: int | None = None) -> np.ndarray:
        return decode_image(self.raw(position), self.members[position], min_side)

    def dense(self) -> None:
        return None

    def side(self, position: int) -> int:
        raw = self.raw(position)
        try:
            with Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw) as image:  # the header only
                return int(min(image.size))
        except Exception as exc:  # Pillow raises many types on bad files
            raise InputError(f"cannot read image {self.members[position]}: {exc}") from exc

    def digest(self, position: int) -> bytes:
        raw = self.raw(position)
        try:
            data = raw if isinstance(raw, bytes) else raw.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read image {self.members[position]}: {exc}") from exc
        return hashlib.sha256(b"file" + data).digest()[:DIGEST_BYTES]


class FileSource(_MemberSource):
    """Image files under a directory, given by their paths relative to it."""

    def __init__(self, root: str | os.PathLike, members: Sequence[str]) -> None:
        self.root = Path(root)
        self.members = list(members)

    def raw(self, position: int) -> Path:
        """The member's path, once it is known to be a regular file: one replaced by a named pipe (or a device)
        after the folder was scanned would block whoever opens it, so it is refused instead."""
        path = self.root / self.members[position]
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(mode):
            raise InputError(f"cannot read image {path}: it is no longer a regular file (a named pipe, device "
                             "or folder now has its name)")
        return path

    def fingerprint(self, positions: np.ndarray) -> str:
        digest = hashlib.sha256(b"files")
        for position in positions:
            member = self.members[position]
            try:
                info = os.stat(self.root / member)
            except OSError as exc:
                raise InputError(f"cannot read image {member}: {exc}") from exc
            digest.update(f"{member}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class ZipSource(_MemberSource):
    """Image members of a zip archive, read through one shared handle guarded by a lock."""

    def __init__(self, path: str | os.PathLike, members: Sequence[str]) -> None:
        self.path = Path(path)
        self.members = list(members)
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None

    def raw(self, position: int) -> bytes:
        member = self.members[position]
        with self._lock:
            try:
                if self._zip is None:
                    self._zip = zipfile.ZipFile(self.path)
                return self._zip.read(member)
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise InputError(f"cannot read {member} from {self.path}: {exc}") from exc

    def fingerprint(self, positions: np.ndarray) -> str:
        digest = hashlib.sha256(b"zip")
        with zipfile.ZipFile(self.path) as archive:
            for position in positions:
                info = archive.getinfo(self.members[position])
                digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
        return digest.hexdigest()


class DecodedOnceSource:
    """Decodes every image of `inner` into one array on first access (small same-size images, e.g. CIFAR)."""

    def __init__(self, inner: FileSource | ZipSource, description: str) -> None:
        self.inner = inner
        self.description = description
        self._images: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, position: int, min_side: int | None = None) -> np.ndarray:
        return self.dense()[position]

    def dense(self) -> np.ndarray:
        with self._lock:
            if self._images is None:
                self._images = self._decode_all()
            return self._images

    def _decode_all(self) -> np.ndarray:
        first = self.inner.read(0)
        images = np.empty((len(self.inner), *first.shape), dtype=np.uint8)
        images[0] = first
        for position in progress(range(1, len(self.inner)), len(self.inner) - 1, f"decoding {self.description}"):
            image = self.inner.read(position)
            if image.shape != first.shape:
                raise InputError(
                    f"{self.inner.members[position]} is {image.shape[1]}x{image.shape[0]}, but the images of "
                    f"{self.description} must all be {first.shape[1]}x{first.shape[0]}"
                )
            images[position] = image
        return images

    def digest(self, position: int) -> bytes:
        return self.inner.digest(position)

    def side(self, position: int) -> int:
        return self.inner.side(position)

    def fingerprint(self, positions: np.ndarray) -> str:
        return self.inner.fingerprint(positions)


# ---------------------------------------------------------------------------------------------- bad files


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise InputError(f"on_error={on_error!r} must be one of {ON_ERROR_CHOICES}")
    return on_error


class BadFiles:
    """Collects unusable files while scanning: raises at the first with on_error="raise", else warns once."""

    def __init__(self, on_error: str) -> None:
        self.on_error = check_on_error(on_error)
        self.entries: list[tuple[str, str]] = []

    def add(self, location: str, reason: str) -> None:
        if self.on_error == "raise":
            raise InputError(f"unusable image {location}: {reason} (pass on_error='skip' to skip such files)")
        self.entries.append((location, reason))

    def report(self, where: str) -> list[tuple[str, str]]:
        if self.entries:
            shown = "; ".join(f"{location} ({reason})" for location, reason in self.entries[:_REPORTED_BAD_FILES])
            more = len(self.entries) - _REPORTED_BAD_FILES
            warnings.warn(
                f"skipped {len(self.entries)} unusable file(s) in {where}: {shown}"
                + (f"; and {more} more (see Dataset.bad_files)" if more > 0 else ""),
                stacklevel=3,
            )
        return self.entries


# ---------------------------------------------------------------------------------------------- dataset


class Dataset:
    """Images (by index) with optional single- or multi-label annotations and where each came from.

    labels: (n,) int64 class ids, or (n, C) uint8 0/1 for multi-label data, or None when unlabelled.
    locations: one string per image naming it inside its collection ("train/cat/0001.jpg", "digits/17").
    """

    def __init__(
        self,
        name: str,
        source: ImageSource,
        locations: Sequence[str],
        *,
        labels: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
        bad_files: Sequence[tuple[str, str]] = (),
        positions: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self._positions = np.arange(len(source), dtype=np.int64) if positions is None else positions
        self.locations = list(locations)
        self.labels = _check_labels(labels, len(self._positions), class_names)
        self.class_names = None if class_names is None else list(class_names)
        self.root = None if root is None else str(root)
        self.bad_files = list(bad_files)
        self._fingerprint: str | None = None
        if len(self.locations) != len(self._positions):
            raise InputError(f"{len(self.locations)} locations for {len(self._positions)} images")

    def __len__(self) -> int:
        return len(self._positions)

    def __repr__(self) -> str:
        classes = "unlabelled" if self.class_names is None else f"{len(self.class_names)} classes"
        kind = ", multi-label" if self.multilabel else ""
        return f"Dataset(name={self.name!r}, n={len(self)}, {classes}{kind}, root={self.root!r})"

    @property
    def multilabel(self) -> bool:
        return self.labels is not None and self.labels.ndim == 2

    @property
    def n_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def typical_side(self, sample: int = 64) -> int:
        """The median shorter side, in pixels, of up to `sample` of the images (spread evenly; headers only)."""
        if len(self) == 0:
            raise InputError(f"dataset {self.name!r} has no images")
        picked = np.unique(np.linspace(0, len(self) - 1, min(sample, len(self))).astype(np.int64))
        return int(np.median([self._source.side(int(self._positions[i])) for i in picked]))

    def content_digest(self, index: int) -> bytes:
        """A 16-byte digest of image `index`'s file content (or pixels, for in-memory images)."""
        return self._source.digest(int(self._positions[self._check_indices([index])[0]]))

    def read_image(self, index: int, min_side: int | None = None) -> np.ndarray:
        """Image `index` as an (H, W, 3) uint8 RGB array; InputError naming the location on failure.
        With `min_side`, large files may decode at reduced size (both sides still at least `min_side`)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise InputError(f"index={index!r} must be an integer in [0, {len(self)})")
        return self._source.read(int(self._positions[index]), min_side)

    def iter_batches(
        self, batch_size: int, indices: Any = None
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Yield (indices, images) in chunks of `batch_size`, in the order of `indices` (default: all)."""
        check_positive_int(batch_size, "batch_size")
        selected = self._check_indices(indices)
        for start in range(0, len(selected), batch_size):
            chunk = selected[start : start + batch_size]
            yield chunk, [self._source.read(int(self._positions[i])) for i in chunk]

    def to_array(self, indices: Any = None, size: int | None = None) -> np.ndarray:
        """Images as one (n, H, W, 3) uint8 array; with `size`, centre-cropped square and resized to size x size."""
        selected = self._check_indices(indices)
        if size is not None:
            check_positive_int(size, "size")
        dense = self._source.dense()
        if dense is not None:
            images = dense[self._positions[selected]]
            if size is None or images.shape[1:3] == (size, size):
                return images
            return self._stack((resize_square(image, size) for image in images), len(images), size)
        images = (self._source.read(int(self._positions[i])) for i in selected)
        if size is not None:
            images = (resize_square(image, size) for image in images)
        return self._stack(images, len(selected), size, selected)

    def _stack(self, images: Iterator[np.ndarray], count: int, size: int | None, selected=None) -> np.ndarray:
        out: np.ndarray | None = None
        for row, image in enumerate(progress(images, count, f"loading {self.name}") if count > 1000 else images):
            if out is None:
                out = np.empty((count, *image.shape), dtype=np.uint8)
            elif image.shape != out.shape[1:]:
                where = self.locations[selected[row]] if selected is not None else f"image {row}"
                raise InputError(
                    f"{where} has shape {image.shape}, unlike {out.shape[1:]} before it; "
                    "pass size=... to resize every image to one size"
                )
            out[row] = image
        if out is None:
            side = size or 0
            return np.empty((0, side, side, 3), dtype=np.uint8)
        return out

    def fingerprint(self) -> str:
        """Hex digest of which image contents this dataset holds, in order (labels excluded): a cache key."""
        if self._fingerprint is None:
            self._fingerprint = self._source.fingerprint(self._positions)
        return self._fingerprint

    def subset(self, indices: Any) -> Dataset:
        """A Dataset of the images at `indices` (integer array or boolean mask), sharing the decoded pixels."""
        selected = self._check_indices(indices)
        return Dataset(
            self.name,
            self._source,
            [self.locations[i] for i in selected],
            labels=None if self.labels is None else self.labels[selected],
            class_names=self.class_names,
            root=self.root,
            bad_files=self.bad_files,
            positions=self._positions[selected],
        )

    def _check_indices(self, indices: Any) -> np.ndarray:
        if indices is None:
            return np.arange(len(self), dtype=np.int64)
        array = np.asarray(indices)
        if array.dtype == bool:
            if array.shape != (len(self),):
                raise InputError(f"a boolean mask must have shape ({len(self)},); got {array.shape}")
            return np.flatnonzero(array).astype(np.int64)
        if array.size == 0:
            return np.empty(0, dtype=np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"indices must be a 1-D integer array; got {array.dtype} with shape {array.shape}")
        if array.min() < 0 or array.max() >= len(self):
            bad = array[(array < 0) | (array >= len(self))][0]
            raise InputError(f"index {bad} is out of range for a dataset of {len(self)} images")
        return array.astype(np.int64)


def _check_labels(labels: np.ndarray | None, n: int, class_names: Sequence[str] | None) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels.astype(np.int64)
        n_classes = None if class_names is None else len(class_names)
        if n_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise InputError(f"labels must lie in [0, {n_classes}); got {labels.min()}..{labels.max()}")
    elif labels.ndim == 2:
        if not np.isin(labels, (0, 1)).all():
            raise InputError("multi-label labels must be 0/1")
        labels = labels.astype(np.uint8)
    else:
        raise InputError(f"labels must be (n,) or (n, C); got shape {labels.shape}")
    if len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} images")
    return labels
