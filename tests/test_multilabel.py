"""NUS-WIDE and MIRFlickr-25K readers on tiny fixtures written in the official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bganhash import InputError
from bganhash.datasets import load_dataset, protocol_split

COMMON = [f"concept{k:02d}" for k in range(21)]
RARE = ["zz_rare1", "zz_rare2"]
N_NUS = 12


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (20 * shade, 0, 0)).save(path)


def _nuswide(root: Path, rng, windows_prefix: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Images 0 and 1 carry every common concept; the rare ones only mark image 11 (so it is dropped)."""
    names = COMMON + RARE
    labels = np.zeros((N_NUS, len(names)), dtype=np.uint8)
    labels[:11, :21] = rng.integers(0, 2, size=(11, 21))
    labels[:2, :21] = 1
    labels[11, 21:] = 1
    members = [f"{names[i % 21]}/{i:04d}_{1000 + i}.jpg" for i in range(N_NUS)]
    lines = [windows_prefix + m.replace("/", "\\") for m in members]
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(lines) + "\r\n")
    (root / "Groundtruth" / "AllLabels").mkdir(parents=True)
    for column, name in enumerate(names):
        text = "\r\n".join(str(v) for v in labels[:, column]) + "\r\n"
        (root / "Groundtruth" / "AllLabels" / f"Labels_{name}.txt").write_text(text)
    for i, member in enumerate(members):
        _image(root / "Flickr" / member, i)
    return members, labels, names


@pytest.mark.parametrize("prefix", ["C:\\ImageData\\Flickr\\", ""])
def test_nuswide_keeps_the_21_most_frequent_concepts(tmp_path, rng, prefix):
    members, labels, names = _nuswide(tmp_path, rng, prefix)
    dataset = load_dataset("nuswide", tmp_path)
    assert dataset.name == "nuswide" and dataset.multilabel and dataset.class_names == COMMON
    assert dataset.locations == members[:11] and dataset.labels.dtype == np.uint8
    assert np.array_equal(dataset.labels, labels[:11, :21])
    assert np.abs(dataset.read_image(3)[0, 0].astype(int) - (60, 0, 0)).max() <= 3  # JPEG


@pytest.mark.parametrize("n_concepts", [3, 8])
def test_nuswide_top_concepts_ties_broken_by_name(tmp_path, rng, n_concepts):
    _, labels, names = _nuswide(tmp_path, rng, "")
    counts = labels.sum(axis=0).astype(int)
    oracle = sorted(sorted(names, key=lambda n: (-counts[names.index(n)], n))[:n_concepts])
    dataset = load_dataset("nuswide", tmp_path, n_concepts=n_concepts)
    assert dataset.class_names == oracle
    columns = [names.index(n) for n in oracle]
    keep = labels[:, columns].any(axis=1)
    assert np.array_equal(dataset.labels, labels[keep][:, columns])


def test_nuswide_missing_images_and_images_dir(tmp_path, rng):
    members, _, _ = _nuswide(tmp_path / "meta", rng, "")
    (tmp_path / "meta" / "Flickr").rename(tmp_path / "pictures")
    (tmp_path / "pictures" / members[4]).unlink()
    with pytest.warns(UserWarning, match="skipped 1 .*0004"):
        dataset = load_dataset("nuswide", tmp_path / "meta", images_dir=tmp_path / "pictures")
    assert members[4] not in dataset.locations and len(dataset) == 10
    assert dataset.bad_files[0][0] == members[4]
    with pytest.raises(InputError, match="0004"):
        load_dataset("nuswide", tmp_path / "meta", images_dir=tmp_path / "pictures", on_error="raise")


def test_nuswide_label_file_length_is_checked(tmp_path, rng):
    _nuswide(tmp_path, rng, "")
    (tmp_path / "Groundtruth" / "AllLabels" / "Labels_concept03.txt").write_text("0\n1\n")
    with pytest.raises(InputError, match="Labels_concept03.txt"):
        load_dataset("nuswide", tmp_path)


def test_nuswide_split_per_concept(tmp_path, rng):
    _nuswide(tmp_path, rng, "")
    dataset = load_dataset("nuswide", tmp_path, n_concepts=2)
    split = protocol_split(dataset, protocol="per-class", query_per_class=1, train_per_class=1)
    assert len(split.query) == 2 and len(split.train) == 2
    assert not set(split.query) & set(split.train)
    with pytest.raises(InputError, match="class 'concept"):
        protocol_split(dataset)  # the paper's 100 + 1,000 per concept cannot fit 11 images


MIR_CONCEPTS = {"sky": [1, 2, 3, 11], "water": [2, 5], "people": [3, 4, 6, 7, 8, 9]}


def _mirflickr(root: Path) -> None:
    for image_id in range(1, 11):
        _image(root / "mirflickr" / f"im{image_id}.jpg", image_id)
    (root / "mirflickr" / "meta").mkdir()
    annotations = root / "mirflickr25k_annotations_v080"
    annotations.mkdir()
    for name, ids in MIR_CONCEPTS.items():
        (annotations / f"{name}.txt").write_text("\r\n".join(map(str, ids)) + "\r\n")
    (annotations / "sky_r1.txt").write_text("10\n")
    (annotations / "README.txt").write_text("MIRFLICKR-25000 annotations\n")


def test_mirflickr_labels_and_kept_images(tmp_path):
    _mirflickr(tmp_path)
    with pytest.warns(UserWarning, match="im11.jpg"):
        dataset = load_dataset("mirflickr", tmp_path)
    names = sorted(MIR_CONCEPTS)
    assert dataset.name == "mirflickr" and dataset.class_names == names and dataset.multilabel
    kept = sorted({i for ids in MIR_CONCEPTS.values() for i in ids if i <= 10})  # im10 is unlabelled
    assert dataset.locations == [f"im{i}.jpg" for i in kept]
    oracle = np.array([[int(i in MIR_CONCEPTS[n]) for n in names] for i in kept], dtype=np.uint8)
    assert np.array_equal(dataset.labels, oracle)
    assert dataset.bad_files[0][0] == "im11.jpg"
    assert np.abs(dataset.read_image(kept.index(5))[0, 0].astype(int) - (100, 0, 0)).max() <= 3  # JPEG


def test_mirflickr_validate_decodes(tmp_path):
    _mirflickr(tmp_path)
    (tmp_path / "mirflickr" / "im4.jpg").write_bytes(b"broken")
    with pytest.warns(UserWarning):
        dataset = load_dataset("mirflickr", tmp_path, validate=True)
    assert "im4.jpg" not in dataset.locations and ("im4.jpg" in [loc for loc, _ in dataset.bad_files])


def test_mirflickr_missing_folders(tmp_path):
    with pytest.raises(InputError, match="mirflickr"):
        load_dataset("mirflickr", tmp_path)
