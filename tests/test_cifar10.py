"""CIFAR-10 readers: official pickles (folder, tarball), image folders and zips, download checks."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bganhash import InputError
from bganhash.datasets import CIFAR10_CLASSES, download_cifar10, load_dataset, protocol_split
from bganhash.datasets.cifar10 import BATCH_NAMES, TARBALL_NAME

PER_BATCH = 4


def _write_batches(directory: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tiny batches in the official format; returns the (n, 32, 32, 3) images and labels they hold."""
    directory.mkdir(parents=True)
    images, labels = [], []
    for name in BATCH_NAMES:
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, size=PER_BATCH).tolist()
        document = {
            b"batch_label": name.encode(),
            b"labels": batch_labels,
            b"data": data,
            b"filenames": [b"x.png"] * PER_BATCH,
        }
        (directory / name).write_bytes(pickle.dumps(document, protocol=2))
        # oracle: pixel (row, col) of channel c sits at c * 1024 + row * 32 + col
        images.append(np.stack([data[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)], axis=-1))
        labels += batch_labels
    meta = {b"label_names": [name.encode() for name in CIFAR10_CLASSES], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(images), np.array(labels)


@pytest.fixture
def batches(tmp_path, rng):
    directory = tmp_path / "cifar-10-batches-py"
    images, labels = _write_batches(directory, rng)
    return directory, images, labels


def _tarball(batches_dir: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as archive:
        archive.add(batches_dir, arcname="cifar-10-batches-py")
    return target


def _check(dataset, images, labels):
    assert dataset.name == "cifar10" and len(dataset) == len(BATCH_NAMES) * PER_BATCH
    assert np.array_equal(dataset.to_array(), images)
    assert np.array_equal(dataset.labels, labels) and dataset.labels.dtype == np.int64
    assert dataset.class_names == list(CIFAR10_CLASSES)
    assert dataset.locations[0] == "cifar10/data_batch_1/0"
    assert dataset.locations[-1] == f"cifar10/test_batch/{PER_BATCH - 1}"


def test_batch_folder(batches):
    directory, images, labels = batches
    _check(load_dataset("cifar10", directory), images, labels)
    _check(load_dataset("cifar10", directory.parent), images, labels)  # the folder holding it


def test_tarball_read_without_extracting(batches, tmp_path):
    directory, images, labels = batches
    tarball = _tarball(directory, tmp_path / "elsewhere" / TARBALL_NAME)
    before = sorted(os.listdir(tarball.parent))
    _check(load_dataset("cifar10", tarball), images, labels)
    _check(load_dataset("cifar10", tarball.parent), images, labels)
    assert sorted(os.listdir(tarball.parent)) == before


def test_missing_batch_is_named(batches):
    directory, _, _ = batches
    (directory / "data_batch_3").unlink()
    with pytest.raises(InputError, match="data_batch_3"):
        load_dataset("cifar10", directory)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(batches, tmp_path):
    directory, _, _ = batches
    marker = tmp_path / "pwned"
    (directory / "data_batch_2").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(InputError, match="system"):
        load_dataset("cifar10", directory)
    assert not marker.exists()


def test_damaged_batch_is_an_input_error(batches):
    directory, _, _ = batches
    (directory / "test_batch").write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(InputError, match="test_batch"):
        load_dataset("cifar10", directory)


def _write_image_tree(root: Path, per_class: int, rng) -> dict[str, np.ndarray]:
    """train/<class>/NNNN.png and test/<class>/NNNN.png (lossless), file names shuffled on disk."""
    written = {}
    for split in ("test", "train"):
        for name in reversed(CIFAR10_CLASSES):
            for number in rng.permutation(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                path = root / split / name / f"{number:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                written[f"{split}/{name}/{number:04d}.png"] = pixels
    return written


def _expected_order(per_class: int) -> list[str]:
    return [f"{s}/{c}/{i:04d}.png" for s in ("train", "test") for c in CIFAR10_CLASSES for i in range(per_class)]


@pytest.mark.parametrize("as_zip", [False, True])
def test_image_tree_order_labels_pixels(tmp_path, rng, as_zip):
    root = tmp_path / "tree"
    written = _write_image_tree(root, 2, rng)
    data = root
    if as_zip:
        data = tmp_path / "tree.zip"
        with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED) as archive:
            for member in sorted(written, reverse=True):
                archive.write(root / member, member)
    dataset = load_dataset("cifar10", data)
    order = _expected_order(2)
    assert dataset.locations == order
    assert dataset.labels.tolist() == [CIFAR10_CLASSES.index(m.split("/")[1]) for m in order]
    assert np.array_equal(dataset.to_array(), np.stack([written[m] for m in order]))
    assert np.array_equal(dataset.read_image(3), written[order[3]])


def test_image_tree_rejects_foreign_layout(tmp_path):
    path = tmp_path / "train" / "unicorn" / "0001.png"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(InputError, match="unicorn"):
        load_dataset("cifar10", tmp_path)


def test_image_tree_size_mismatch_is_reported(tmp_path, rng):
    _write_image_tree(tmp_path, 1, rng)
    Image.new("RGB", (31, 32)).save(tmp_path / "test" / "truck" / "0000.png")
    with pytest.raises(InputError, match="test/truck/0000.png"):
        load_dataset("cifar10", tmp_path).to_array()


def test_no_data_explains_how_to_get_it():
    with pytest.raises(InputError, match=r"needs the CIFAR-10 data: pass data=PATH \(CLI: --data PATH\).*"
                                         r"download=True \(CLI: --download\)"):
        load_dataset("cifar10")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("cifar10", "/no/such/cifar")


def test_download_verifies_md5(tmp_path):
    payload = b"not really a tarball" * 100
    source = tmp_path / "served.bin"
    source.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    target = download_cifar10(tmp_path / "cache", url=source.as_uri(), md5=md5)
    assert target == tmp_path / "cache" / TARBALL_NAME and target.read_bytes() == payload
    assert download_cifar10(tmp_path / "cache", url="file:///nowhere", md5=md5) == target  # kept, not refetched


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    source = tmp_path / "served.bin"
    source.write_bytes(b"tampered")
    with pytest.raises(InputError, match="md5"):
        download_cifar10(tmp_path / "cache", url=source.as_uri(), md5="0" * 32)
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_failure_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="could not download"):
        download_cifar10(tmp_path, url=(tmp_path / "absent.tar.gz").as_uri(), md5="0" * 32)


def test_download_option_uses_the_cache(tmp_path, batches, monkeypatch):
    directory, images, labels = batches
    cache = tmp_path / "cache"
    tarball = _tarball(directory, tmp_path / TARBALL_NAME)
    import bganhash.datasets.cifar10 as cifar10

    monkeypatch.setenv("BGANHASH_CACHE", str(cache))
    monkeypatch.setattr(cifar10, "download_cifar10", lambda d: download_cifar10(d, tarball.as_uri(), _md5(tarball)))
    _check(load_dataset("cifar10", download=True), images, labels)
    assert (cache / "cifar10" / TARBALL_NAME).is_file()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_shared_zip(cifar10_zip):
    dataset = load_dataset("cifar10", cifar10_zip)
    images = dataset.to_array()
    assert images.shape == (60000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(dataset.labels).tolist() == [6000] * 10
    assert dataset.locations[0].startswith("train/airplane/") and dataset.locations[-1].startswith("test/truck/")
    split = protocol_split(dataset, seed=0)
    assert split.sizes() == {"query": 1000, "train": 10000, "database": 59000}
    assert np.bincount(dataset.labels[split.query]).tolist() == [100] * 10
    assert np.bincount(dataset.labels[split.train]).tolist() == [1000] * 10
