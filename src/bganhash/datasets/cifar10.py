"""CIFAR-10 from the official python pickles (folder or tarball), an image-folder tree or zip, or a download."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct
from tqdm.auto import tqdm

from bganhash._io import atomic_write, cache_root
from bganhash._validation import InputError
from bganhash.datasets.base import ArraySource, Dataset, DecodedOnceSource
from bganhash.datasets.folder import list_image_files, open_source

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
BATCH_NAMES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
META_NAME = "batches.meta"
IMAGE_SIDE = 32
SPLIT_FOLDERS = ("train", "test")
_HOW_TO_GET = (
    "pass data=PATH (CLI: --data PATH): the cifar-10-batches-py folder, cifar-10-python.tar.gz, or an image "
    "folder or zip laid out as train/<class>/*.jpg and test/<class>/*.jpg; "
    f"or download=True (CLI: --download) to fetch the official tarball from {OFFICIAL_URL}"
)


def load_cifar10(data: str | os.PathLike | None = None, *, download: bool = False) -> Dataset:
    """CIFAR-10's 60,000 images, train then test, labels in CIFAR's order (airplane ... truck).

    A decoding failure in this fixed collection is fatal (InputError naming the file), never skipped.
    """
    if data is None:
        if not download:
            raise InputError(f"needs the CIFAR-10 data: {_HOW_TO_GET}")
        data = download_cifar10(cache_root() / "cifar10")
    path = Path(data)
    if path.is_dir():
        if any((path / name).is_file() for name in (*BATCH_NAMES, META_NAME)):
            return _from_batches(path, _read_batch_directory(path))
        if (path / BATCHES_DIR).is_dir():
            return _from_batches(path / BATCHES_DIR, _read_batch_directory(path / BATCHES_DIR))
        if (path / TARBALL_NAME).is_file():
            return _from_batches(path / TARBALL_NAME, _read_batch_tarball(path / TARBALL_NAME))
        return _from_image_folder(path)
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _from_image_folder(path)
        if tarfile.is_tarfile(path):
            return _from_batches(path, _read_batch_tarball(path))
        raise InputError(f"{path} is not a CIFAR-10 tarball, zip or folder; {_HOW_TO_GET}")
    raise InputError(f"{path} does not exist; {_HOW_TO_GET}")


# ---------------------------------------------------------------------------------------------- pickles


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3's protocol-2 pickles call to rebuild bytes; restricted to the one harmless codec."""
    if encoding.lower().replace("-", "") != "latin1":
        raise InputError(f"a CIFAR-10 batch may only rebuild bytes with latin1, not {encoding!r}")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,  # batches re-saved by Python 3 at protocol 2
    }

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="latin1")  # what Python 2 pickles of numpy arrays need
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise InputError(
                f"{self.where} refers to {module}.{name}; a CIFAR-10 batch holds only numpy arrays and lists, "
                "so it was not loaded"
            ) from None


def unpickle_batch(payload: bytes, where: str) -> dict[str, Any]:
    """Decode one official batch file safely; keys come back as str whether pickled as str or bytes."""
    try:
        document = _NumpyOnlyUnpickler(io.BytesIO(payload), where).load()
    except InputError:
        raise
    except Exception as exc:  # a damaged file raises anything from UnpicklingError to EOFError
        raise InputError(f"{where} is not a readable CIFAR-10 batch: {type(exc).__name__}: {exc}") from exc
    if not isinstance(document, dict):
        raise InputError(f"{where} holds a {type(document).__name__}, not a CIFAR-10 batch dictionary")
    return {_text(key): value for key, value in document.items()}


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_batch_directory(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (*BATCH_NAMES, META_NAME) if (directory / name).is_file()}


def _read_batch_tarball(tarball: Path) -> dict[str, bytes]:
    """The batch files' bytes, read member by member in one pass, nothing extracted to disk."""
    wanted = set(BATCH_NAMES) | {META_NAME}
    found = {}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    found[base] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read {tarball}: {exc}") from exc
    return found


def _from_batches(root: Path, files: dict[str, bytes]) -> Dataset:
    missing = [name for name in BATCH_NAMES if name not in files]
    if missing:
        raise InputError(f"{root} lacks the CIFAR-10 batch file(s) {', '.join(missing)}")
    images, labels, locations = [], [], []
    for name in BATCH_NAMES:
        batch_images, batch_labels = _batch_arrays(unpickle_batch(files[name], f"{root}/{name}"), f"{root}/{name}")
        images.append(batch_images)
        labels.append(batch_labels)
        locations += [f"cifar10/{name}/{i}" for i in range(len(batch_labels))]
    class_names = list(CIFAR10_CLASSES)
    if META_NAME in files:
        meta = unpickle_batch(files[META_NAME], f"{root}/{META_NAME}")
        class_names = [_text(label) for label in meta.get("label_names", class_names)]
        if len(class_names) != len(CIFAR10_CLASSES):
            raise InputError(f"{root}/{META_NAME} names {len(class_names)} classes; CIFAR-10 has 10")
    return Dataset(
        "cifar10",
        ArraySource(np.concatenate(images)),
        locations,
        labels=np.concatenate(labels),
        class_names=class_names,
        root=root,
    )


def _batch_arrays(batch: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 images and (n,) int64 labels from a batch's row-major channels-first rows."""
    if "data" not in batch or "labels" not in batch:
        raise InputError(f"{where} lacks the 'data' or 'labels' entry of a CIFAR-10 batch")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIDE * IMAGE_SIDE:
        raise InputError(f"{where}: data must be (n, 3072) uint8; got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise InputError(f"{where}: labels must be {len(data)} integers in 0..9")
    images = data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


# ---------------------------------------------------------------------------------------------- image folders


def _from_image_folder(path: Path) -> Dataset:
    """`[wrapper/]train/<class>/*` then `test/<class>/*`, classes in CIFAR order, files sorted."""
    entries = []
    for member in list_image_files(path):
        parts = member.split("/")
        if len(parts) < 3 or parts[-3] not in SPLIT_FOLDERS or parts[-2] not in CIFAR10_CLASSES:
            raise InputError(
                f"{path}: {member} is not laid out as <train|test>/<CIFAR-10 class>/<file>; {_HOW_TO_GET}"
            )
        entries.append((SPLIT_FOLDERS.index(parts[-3]), CIFAR10_CLASSES.index(parts[-2]), member))
    if not entries:
        raise InputError(f"no images found in {path}; {_HOW_TO_GET}")
    entries.sort()
    members = [member for _, _, member in entries]
    return Dataset(
        "cifar10",
        DecodedOnceSource(open_source(path, members), "CIFAR-10 images"),
        members,
        labels=np.array([label for _, label, _ in entries], dtype=np.int64),
        class_names=list(CIFAR10_CLASSES),
        root=path,
    )


# ---------------------------------------------------------------------------------------------- download


def download_cifar10(directory: str | os.PathLike, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Fetch the CIFAR-10 tarball into `directory` (kept when already there with the right md5) and verify it."""
    target = Path(directory) / TARBALL_NAME
    if target.is_file() and file_md5(target) == md5:
        return target
    try:
        with urllib.request.urlopen(url) as response, atomic_write(target, "wb") as out:
            size = response.headers.get("Content-Length")
            digest = hashlib.md5(usedforsecurity=False)
            with tqdm(
                total=int(size) if size else None, unit="B", unit_scale=True, desc=TARBALL_NAME, disable=None
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != md5:
                raise InputError(f"{url} has md5 {digest.hexdigest()}, expected {md5}; the download was discarded")
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"could not download {url}: {getattr(exc, 'reason', exc)}") from exc
    return target


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file (how the official tarball is checked), read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
