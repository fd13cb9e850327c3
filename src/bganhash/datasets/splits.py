"""Query / training / database splits: the paper's protocol per dataset, seeded and saved as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bganhash._io import write_json
from bganhash._validation import InputError, check_positive_int
from bganhash.datasets.base import Dataset

PROTOCOLS = ("paper", "train-test", "per-class", "random", "all")
# Path components that mark an image of a dataset's official test set (CIFAR-10's test_batch pickle or
# test/ folder): the "train-test" protocol queries with them and searches the rest.
TEST_PARTS = ("test", "test_batch")
SPLIT_FORMAT = "bganhash-split"
# Paper (Song et al. 2017, Sec. 4.1): per-class / per-concept query and training counts, or totals.
PAPER_PER_CLASS = {"cifar10": (100, 1000), "nuswide": (100, 1000)}
PAPER_TOTALS = {"mirflickr": (1000, 4000)}
DIGITS_QUERIES_PER_CLASS = 20
DEFAULT_RANDOM_QUERIES = 1000


@dataclass
class Split:
    """Index arrays into one dataset: queries, the hasher's training images and the searched database."""

    query: np.ndarray
    train: np.ndarray
    database: np.ndarray
    dataset: str
    seed: int
    protocol: str
    n_images: int | None = None  # size of the dataset the indices refer to, checked by `check`

    def __post_init__(self) -> None:
        for field in ("query", "train", "database"):
            array = np.asarray(getattr(self, field))
            if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
                raise InputError(f"Split.{field} must be a 1-D integer array; got {array.dtype} {array.shape}")
            setattr(self, field, array.astype(np.int64))

    def check(self, dataset: Dataset) -> None:
        """Raise InputError unless this split's indices fit `dataset`."""
        if self.n_images is not None and self.n_images != len(dataset):
            raise InputError(
                f"this split is for {self.n_images} images of {self.dataset!r}; the dataset has {len(dataset)}"
            )
        for field in ("query", "train", "database"):
            indices = getattr(self, field)
            if indices.size and (indices.min() < 0 or indices.max() >= len(dataset)):
                raise InputError(f"split {field} indices go beyond the {len(dataset)} images of the dataset")

    def save(self, path: str | os.PathLike) -> None:
        """Write the split as JSON, atomically."""
        write_json(path, {"format": SPLIT_FORMAT, "version": 1, "dataset": self.dataset, "seed": self.seed,
                          "protocol": self.protocol, "n_images": self.n_images, "sizes": self.sizes(),
                          "query": self.query, "train": self.train, "database": self.database})  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        """Read a split written by `save`."""
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read split file {path}: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != SPLIT_FORMAT:
            raise InputError(f"{path} is not a bganhash split file (no \"format\": \"{SPLIT_FORMAT}\")")
        try:
            return cls(**{key: document[key] for key in ("query", "train", "database", "dataset", "seed", "protocol")},
                       n_images=document.get("n_images"))  # fmt: skip
        except KeyError as exc:
            raise InputError(f"split file {path} lacks the entry {exc}") from exc

    def sizes(self) -> dict[str, int]:
        return {"query": len(self.query), "train": len(self.train), "database": len(self.database)}


def protocol_split(
    dataset: Dataset,
    seed: int = 0,
    protocol: str | None = None,
    *,
    n_query: int | None = None,
    n_train: int | None = None,
    query_per_class: int | None = None,
    train_per_class: int | None = None,
) -> Split:
    """The evaluation split of `dataset`; the same seed always gives the same split.

    protocol (default: "paper" for cifar10, nuswide and mirflickr, "per-class" for digits, "random" for a
    labelled folder or when n_query is given, else "all"):
    - "paper": CIFAR-10 100 queries + 1,000 training images per class, NUS-WIDE the same per concept,
      MIRFlickr 1,000 queries + 4,000 training images; the database is every non-query image.
    - "train-test": the other common CIFAR-10 protocol (GreedyHash, BiHalf, CIBHash; scored by mAP@1000):
      every official test image is a query (10,000), and the training images (50,000) are both the
      training set and the database.
    - "per-class": query_per_class queries per class (or concept) and train_per_class training images
      (default: all non-query images). digits has no published protocol; its default is this one with
      20 queries per class, database = training = the other 1,597 images.
    - "random": n_query random queries (default min(1000, n // 10)), n_train training images among the rest
      (default all); "all": no queries, training = database = every image (search without evaluation).
    """
    seed = check_positive_int(seed, "seed", minimum=0)
    protocol = protocol or _default_protocol(dataset, n_query)
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol={protocol!r} must be one of {PROTOCOLS}")
    rng = np.random.default_rng(seed)
    if protocol == "paper":
        query, train = _paper(dataset, rng)
    elif protocol == "train-test":
        query, train = _official_test_and_train(dataset)
        return Split(query, train, train.copy(), dataset.name, seed, protocol, len(dataset))
    elif protocol == "per-class":
        if query_per_class is None and dataset.name != "digits":
            raise InputError("protocol='per-class' needs query_per_class=...")
        query, train = _per_class(dataset, rng, query_per_class or DIGITS_QUERIES_PER_CLASS, train_per_class)
    elif protocol == "random":
        query, train = _random(len(dataset), rng, n_query, n_train)
    else:
        query, train = np.empty(0, dtype=np.int64), np.arange(len(dataset), dtype=np.int64)
    database = np.setdiff1d(np.arange(len(dataset)), query)
    return Split(np.sort(query), np.sort(train), database, dataset.name, seed, protocol, len(dataset))


def validation_split(split: Split, n_query: int | None = None, seed: int = 0) -> Split:
    """Carve validation queries out of `split.train`; the rest of train is both database and training set.

    The test queries are never touched, so hyper-parameters chosen on this split do not see them.
    """
    n_query = max(1, len(split.train) // 10) if n_query is None else check_positive_int(n_query, "n_query")
    if n_query >= len(split.train):
        raise InputError(f"n_query={n_query} must be smaller than the {len(split.train)} training images")
    shuffled = np.random.default_rng(check_positive_int(seed, "seed", minimum=0)).permutation(split.train)
    rest = np.sort(shuffled[n_query:])
    return Split(np.sort(shuffled[:n_query]), rest, rest.copy(), split.dataset, seed,
                 f"{split.protocol}/validation", split.n_images)  # fmt: skip


def _default_protocol(dataset: Dataset, n_query: int | None) -> str:
    if dataset.name in PAPER_PER_CLASS or dataset.name in PAPER_TOTALS:
        return "paper"
    if dataset.name == "digits":
        return "per-class"
    return "random" if n_query is not None or dataset.labels is not None else "all"


def _official_test_and_train(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the official test images (a location with a `test` or `test_batch` component) and
    of the others, or InputError when the dataset has none of one kind."""
    is_test = np.array([any(part in TEST_PARTS for part in location.split("/")) for location in dataset.locations],
                       dtype=bool)
    if not is_test.any() or is_test.all():
        kind = "no" if not is_test.any() else "only"
        raise InputError(f"protocol='train-test' needs a dataset with official train and test images; "
                         f"{dataset.name!r} has {kind} test images (locations under test/ or test_batch)")
    return np.flatnonzero(is_test).astype(np.int64), np.flatnonzero(~is_test).astype(np.int64)


def _paper(dataset: Dataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if dataset.name in PAPER_PER_CLASS:
        return _per_class(dataset, rng, *PAPER_PER_CLASS[dataset.name])
    if dataset.name in PAPER_TOTALS:
        return _random(len(dataset), rng, *PAPER_TOTALS[dataset.name])
    raise InputError(
        f"the paper has no protocol for {dataset.name!r}; use protocol='per-class' (labelled) or 'random'"
    )


def _per_class(
    dataset: Dataset, rng: np.random.Generator, n_query: int, n_train: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """n_query queries then n_train training images per class, drawn from images not drawn before."""
    if dataset.labels is None:
        raise InputError(f"a per-class split needs labels; {dataset.name!r} is unlabelled (use protocol='random')")
    check_positive_int(n_query, "query_per_class")
    membership = (
        dataset.labels.astype(bool) if dataset.multilabel else dataset.labels[:, None] == np.arange(dataset.n_classes)
    )
    drawn = np.zeros(len(dataset), dtype=bool)
    query = _draw_per_class(dataset, membership, drawn, rng, n_query, "queries")
    if n_train is None:
        return query, np.flatnonzero(~drawn)
    train = _draw_per_class(
        dataset, membership, drawn, rng, check_positive_int(n_train, "train_per_class"), "training images"
    )
    return query, train


def _draw_per_class(
    dataset: Dataset, membership: np.ndarray, drawn: np.ndarray, rng: np.random.Generator, count: int, what: str
) -> np.ndarray:
    chosen = []
    for column, class_name in enumerate(dataset.class_names):
        candidates = np.flatnonzero(membership[:, column] & ~drawn)
        if len(candidates) < count:
            raise InputError(
                f"class {class_name!r} of {dataset.name!r} has {len(candidates)} images left for {what}; "
                f"the split needs {count}"
            )
        picked = rng.choice(candidates, size=count, replace=False)
        drawn[picked] = True
        chosen.append(picked)
    return np.concatenate(chosen).astype(np.int64)


def _random(n: int, rng: np.random.Generator, n_query: int | None, n_train: int | None) -> tuple[Any, Any]:
    n_query = min(DEFAULT_RANDOM_QUERIES, n // 10) if n_query is None else check_positive_int(n_query, "n_query", 0)
    n_train = n - n_query if n_train is None else check_positive_int(n_train, "n_train")
    if n_query + n_train > n:
        raise InputError(f"n_query={n_query} plus n_train={n_train} exceeds the dataset's {n} images")
    order = rng.permutation(n)
    return order[:n_query], order[n_query : n_query + n_train]
