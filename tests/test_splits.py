"""Protocol splits: sizes, class counts, disjointness, determinism, JSON round trip, validation carving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bganhash import InputError
from bganhash.datasets import Dataset, Split, load_dataset, protocol_split, validation_split
from bganhash.datasets.base import ArraySource


def _toy(name: str, labels: np.ndarray | None, class_names=None) -> Dataset:
    n = len(labels) if labels is not None else 500
    images = np.zeros((n, 1, 1, 3), dtype=np.uint8)
    return Dataset(name, ArraySource(images), [f"{name}/{i}" for i in range(n)], labels=labels, class_names=class_names)


@pytest.fixture(scope="module")
def cifar_like() -> Dataset:
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 1200))
    return _toy("cifar10", labels, [f"class{c}" for c in range(10)])


def _check_partition(split: Split, n: int) -> None:
    assert not set(split.query) & set(split.database)
    assert np.array_equal(np.union1d(split.query, split.database), np.arange(n))
    assert set(split.train) <= set(split.database)
    for part in (split.query, split.train, split.database):
        assert part.dtype == np.int64 and len(np.unique(part)) == len(part)


def test_cifar_paper_split(cifar_like):
    split = protocol_split(cifar_like, seed=3)
    assert split.protocol == "paper" and split.dataset == "cifar10" and split.seed == 3
    assert split.sizes() == {"query": 1000, "train": 10000, "database": 11000}
    _check_partition(split, len(cifar_like))
    assert np.bincount(cifar_like.labels[split.query]).tolist() == [100] * 10
    assert np.bincount(cifar_like.labels[split.train]).tolist() == [1000] * 10


def test_same_seed_same_split_other_seed_differs(cifar_like):
    first, again, other = (protocol_split(cifar_like, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(getattr(first, f), getattr(again, f)) for f in ("query", "train", "database"))
    assert not np.array_equal(first.query, other.query)


def test_too_small_class_names_class_and_counts():
    labels = np.repeat(np.arange(10), 1100)
    labels[:50] = 1  # class0 keeps 1,050 images
    with pytest.raises(
        InputError, match=r"class 'class0' .* has 950 images left for training images; the split needs 1000"
    ):
        protocol_split(_toy("cifar10", labels, [f"class{c}" for c in range(10)]))


def test_save_load_round_trip(cifar_like, tmp_path):
    split = protocol_split(cifar_like, seed=5)
    split.save(tmp_path / "run" / "split.json")
    loaded = Split.load(tmp_path / "run" / "split.json")
    for field in ("query", "train", "database"):
        assert (
            np.array_equal(getattr(loaded, field), getattr(split, field)) and getattr(loaded, field).dtype == np.int64
        )
    assert (loaded.dataset, loaded.seed, loaded.protocol, loaded.n_images) == ("cifar10", 5, "paper", 12000)
    assert json.loads((tmp_path / "run" / "split.json").read_text())["sizes"]["train"] == 10000
    loaded.check(cifar_like)
    with pytest.raises(InputError, match="12000"):
        loaded.check(cifar_like.subset(np.arange(10)))


@pytest.mark.parametrize("content", ["{not json", '{"format": "other"}', '{"format": "bganhash-split"}'])
def test_load_rejects_bad_files(tmp_path, content):
    (tmp_path / "split.json").write_text(content)
    with pytest.raises(InputError, match="split"):
        Split.load(tmp_path / "split.json")


def test_digits_split():
    digits = load_dataset("digits")
    split = protocol_split(digits, seed=0)
    assert split.protocol == "per-class" and split.sizes() == {"query": 200, "train": 1597, "database": 1597}
    assert np.bincount(digits.labels[split.query]).tolist() == [20] * 10
    assert np.array_equal(split.train, split.database)
    _check_partition(split, len(digits))


def test_multilabel_paper_split_draws_per_concept():
    rng = np.random.default_rng(0)
    labels = (rng.random((60000, 21)) < 0.1).astype(np.uint8)
    dataset = _toy("nuswide", labels, [f"c{k}" for k in range(21)])
    split = protocol_split(dataset, seed=1)
    assert split.sizes() == {"query": 2100, "train": 21000, "database": 60000 - 2100}
    _check_partition(split, len(dataset))
    assert not set(split.query) & set(split.train)
    assert (labels[split.query].sum(axis=0) >= 100).all() and (labels[split.train].sum(axis=0) >= 1000).all()


def test_mirflickr_paper_split():
    labels = np.ones((6000, 3), dtype=np.uint8)
    split = protocol_split(_toy("mirflickr", labels, ["a", "b", "c"]), seed=0)
    assert split.sizes() == {"query": 1000, "train": 4000, "database": 5000}
    _check_partition(split, 6000)


def test_unlabelled_folder_splits():
    dataset = _toy("folder", None)
    everything = protocol_split(dataset)
    assert everything.protocol == "all" and len(everything.query) == 0
    assert np.array_equal(everything.train, np.arange(500)) and np.array_equal(everything.database, np.arange(500))
    random = protocol_split(dataset, seed=2, n_query=30, n_train=100)
    assert random.protocol == "random" and random.sizes() == {"query": 30, "train": 100, "database": 470}
    _check_partition(random, 500)
    with pytest.raises(InputError, match="per-class"):
        protocol_split(dataset, protocol="paper")
    with pytest.raises(InputError, match="exceeds"):
        protocol_split(dataset, n_query=400, n_train=200)


def test_validation_split_stays_inside_train(cifar_like):
    split = protocol_split(cifar_like, seed=0)
    val = validation_split(split, n_query=500, seed=4)
    assert set(val.query) <= set(split.train) and not set(val.query) & set(split.query)
    assert np.array_equal(val.train, val.database)
    assert np.array_equal(np.sort(np.concatenate([val.query, val.train])), split.train)
    assert val.protocol == "paper/validation" and len(validation_split(split).query) == 1000
    assert np.array_equal(validation_split(split, 500, seed=4).query, val.query)
    with pytest.raises(InputError, match="n_query"):
        validation_split(split, n_query=10000)


def _train_and_test(n_train: int, n_test: int, pickles: bool) -> Dataset:
    """A CIFAR-10-like dataset whose locations say which images are official test images."""
    labels = np.arange(n_train + n_test) % 10
    if pickles:
        locations = [f"cifar10/data_batch_1/{i}" for i in range(n_train)] + \
            [f"cifar10/test_batch/{i}" for i in range(n_test)]
    else:
        locations = [f"cifar/train/cat/{i:04d}.jpg" for i in range(n_train)] + \
            [f"cifar/test/cat/{i:04d}.jpg" for i in range(n_test)]
    images = np.zeros((len(labels), 1, 1, 3), dtype=np.uint8)
    return Dataset("cifar10", ArraySource(images), locations, labels=labels, class_names=[f"c{c}" for c in range(10)])


@pytest.mark.parametrize("pickles", [True, False])
def test_train_test_protocol_queries_the_test_images_against_the_training_images(tmp_path, pickles):
    dataset = _train_and_test(50, 10, pickles)
    split = protocol_split(dataset, protocol="train-test")
    assert split.protocol == "train-test"
    np.testing.assert_array_equal(split.query, np.arange(50, 60))
    np.testing.assert_array_equal(split.train, np.arange(50))
    np.testing.assert_array_equal(split.database, np.arange(50))
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.protocol == "train-test" and loaded.sizes() == {"query": 10, "train": 50, "database": 50}
    np.testing.assert_array_equal(loaded.query, split.query)
    loaded.check(dataset)


def test_train_test_protocol_needs_official_test_images():
    with pytest.raises(InputError, match="train-test.*no test images"):
        protocol_split(_toy("digits", np.arange(100) % 10), protocol="train-test")
