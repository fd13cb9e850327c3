"""A user's folder or zip of images: labels from sub-folders, mode conversion, bad files."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bganhash import InputError
from bganhash.datasets import load_dataset
from conftest import image_bytes


def _save(path: Path, image: Image.Image, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def _zip_folder(root: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(root).as_posix())
    return target


@pytest.fixture
def labelled(tmp_path, rng) -> Path:
    root = tmp_path / "pets"
    for name, count in (("dogs", 2), ("cats", 3)):
        for i in range(count):
            _save(root / name / f"{i}.png", Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)))
    _save(root / "cats" / "deep" / "x.JPG", Image.new("RGB", (9, 9), (10, 200, 30)))  # recursive, any case
    _save(root / ".hidden" / "h.png", Image.new("RGB", (4, 4)))
    _save(root / "dogs" / ".thumb.png", Image.new("RGB", (4, 4)))
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def _check_labelled(dataset, root_is_zip_prefix=""):
    p = root_is_zip_prefix
    assert dataset.name == "folder" and dataset.class_names == ["cats", "dogs"]
    assert dataset.locations == [
        p + m for m in ("cats/0.png", "cats/1.png", "cats/2.png", "cats/deep/x.JPG", "dogs/0.png", "dogs/1.png")
    ]
    assert dataset.labels.tolist() == [0, 0, 0, 0, 1, 1] and dataset.bad_files == []


def test_labelled_directory(labelled):
    dataset = load_dataset("folder", labelled)
    _check_labelled(dataset)
    assert np.array_equal(dataset.read_image(0), np.asarray(Image.open(labelled / "cats" / "0.png")))
    assert dataset.read_image(3).shape == (9, 9, 3)


@pytest.mark.parametrize("prefix", ["", "pets/"])
def test_labelled_zip(labelled, tmp_path, prefix):
    dataset = load_dataset("folder", _zip_folder(labelled, tmp_path / "pets.zip", prefix))
    _check_labelled(dataset, prefix)  # a single wrapping folder is not taken as the only class
    assert np.array_equal(dataset.read_image(4), np.asarray(Image.open(labelled / "dogs" / "0.png")))


def test_flat_folder_is_unlabelled_and_modes_become_rgb(tmp_path):
    modes = {
        "l.png": Image.new("L", (6, 4), 90),
        "la.png": Image.new("LA", (6, 4), (90, 0)),
        "rgba.png": Image.new("RGBA", (6, 4), (1, 2, 3, 255)),
        "p.gif": Image.new("P", (6, 4), 5),
        "cmyk.jpg": Image.new("CMYK", (6, 4), (0, 0, 0, 0)),
        "i16.png": Image.new("I;16", (6, 4), 65535),
        "rgb.bmp": Image.new("RGB", (6, 4), (7, 8, 9)),
        "rgb.webp": Image.new("RGB", (6, 4), (7, 8, 9)),
        "rgb.tiff": Image.new("RGB", (6, 4), (7, 8, 9)),
    }
    for name, image in modes.items():
        _save(tmp_path / name, image)
    dataset = load_dataset("folder", tmp_path)
    assert dataset.labels is None and dataset.class_names is None and len(dataset) == len(modes)
    for index, location in enumerate(dataset.locations):
        image = dataset.read_image(index)
        assert image.shape == (4, 6, 3) and image.dtype == np.uint8, location
    by_name = dict(zip(dataset.locations, dataset.to_array()))
    assert np.all(by_name["la.png"] == 255) and np.all(by_name["i16.png"] == 255)
    assert np.all(by_name["rgba.png"] == (1, 2, 3)) and np.all(by_name["rgb.tiff"] == (7, 8, 9))


def test_mixed_layout_is_unlabelled_with_a_warning(tmp_path):
    _save(tmp_path / "top.png", Image.new("RGB", (4, 4)))
    _save(tmp_path / "sub" / "a.png", Image.new("RGB", (4, 4)))
    with pytest.warns(UserWarning, match="both at its top level"):
        dataset = load_dataset("folder", tmp_path)
    assert dataset.labels is None
    with pytest.raises(InputError, match="top.png"):
        load_dataset("folder", tmp_path, labels=True)
    assert load_dataset("folder", tmp_path / "sub", labels=False).labels is None


def _bad_files(root: Path) -> None:
    jpeg = image_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    (root / "a_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "b_text.png").write_text("this is not a png")
    (root / "c_truncated.png").write_bytes(image_bytes(Image.new("RGB", (20, 20)))[:-20])
    _save(root / "good.png", Image.new("RGB", (4, 4), (1, 1, 1)))


@pytest.mark.parametrize("as_zip", [False, True])
def test_bad_files_are_skipped_and_reported(tmp_path, as_zip):
    root = tmp_path / "photos"
    root.mkdir()
    _bad_files(root)
    data = _zip_folder(root, tmp_path / "photos.zip") if as_zip else root
    with pytest.warns(UserWarning, match=r"skipped 3 unusable file\(s\).*a_truncated.jpg.*b_text.png.*c_truncated.png"):
        dataset = load_dataset("folder", data)
    assert dataset.locations == ["good.png"]
    assert [location for location, _ in dataset.bad_files] == ["a_truncated.jpg", "b_text.png", "c_truncated.png"]
    with pytest.raises(InputError, match="a_truncated.jpg"):
        load_dataset("folder", data, on_error="raise")


def test_warning_lists_only_the_first_five(tmp_path):
    for i in range(8):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"junk")
    _save(tmp_path / "ok.png", Image.new("RGB", (4, 4)))
    with pytest.warns(UserWarning, match="skipped 8 .*bad4.jpg.*and 3 more") as record:
        load_dataset("folder", tmp_path)
    assert "bad5.jpg" not in str(record[0].message)


def test_decompression_bombs_are_bad_files(tmp_path, monkeypatch):
    _save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    _save(tmp_path / "small.png", Image.new("RGB", (10, 10)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # big.png: 10,000 pixels, warning range
    with pytest.warns(UserWarning, match="big.png"):
        dataset = load_dataset("folder", tmp_path)
    assert dataset.locations == ["small.png"] and "DecompressionBomb" in dataset.bad_files[0][1]


@pytest.mark.parametrize("setup", ["empty", "missing", "only_bad", "not_images"])
def test_unusable_inputs(tmp_path, setup):
    target = tmp_path / "data"
    if setup != "missing":
        target.mkdir()
    if setup == "only_bad":
        (target / "x.jpg").write_bytes(b"junk")
    if setup == "not_images":
        (target / "x.txt").write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=str(target)):
            load_dataset("folder", target)


def test_to_array_sizes(tmp_path):
    _save(tmp_path / "wide.png", Image.new("RGB", (12, 6), (50, 60, 70)))
    _save(tmp_path / "tall.png", Image.new("RGB", (5, 10), (50, 60, 70)))
    dataset = load_dataset("folder", tmp_path)
    with pytest.raises(InputError, match="size="):
        dataset.to_array()
    images = dataset.to_array(size=8)
    assert images.shape == (2, 8, 8, 3) and np.all(images == (50, 60, 70))


def test_read_error_after_scan_names_the_file(tmp_path):
    _save(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    dataset = load_dataset("folder", tmp_path)
    (tmp_path / "a.png").write_bytes(b"junk now")
    with pytest.raises(InputError, match="a.png"):
        dataset.read_image(0)


def test_fingerprint_changes_with_content(tmp_path):
    _save(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    _save(tmp_path / "b.png", Image.new("RGB", (4, 4)))
    first = load_dataset("folder", tmp_path).fingerprint()
    assert load_dataset("folder", tmp_path).fingerprint() == first
    _save(tmp_path / "b.png", Image.new("RGB", (5, 5)))
    os.utime(tmp_path / "b.png", ns=(1, 1))
    assert load_dataset("folder", tmp_path).fingerprint() != first


def test_zip_fingerprint_uses_member_checksums(tmp_path):
    _save(tmp_path / "src" / "a.png", Image.new("RGB", (4, 4)))
    one = load_dataset("folder", _zip_folder(tmp_path / "src", tmp_path / "one.zip")).fingerprint()
    two = load_dataset("folder", _zip_folder(tmp_path / "src", tmp_path / "two.zip")).fingerprint()
    assert one == two  # same members and CRCs, whatever the archive's name or date
    _save(tmp_path / "src" / "a.png", Image.new("RGB", (4, 4), (9, 9, 9)))
    assert load_dataset("folder", _zip_folder(tmp_path / "src", tmp_path / "three.zip")).fingerprint() != one
