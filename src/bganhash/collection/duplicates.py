"""Exact and near copies in a collection: groups of images that are the same picture.

Two images are *near copies* when the cosine similarity of their stored compact features (the re-ranking
vectors of `bganhash.index.rerank`: unit float16 rows, centred and projected on the collection's principal
axes) is at least `threshold`. Only the `candidates` nearest codes of each image by Hamming distance are
compared, so the work grows as n x candidates, not n^2. They are *exact copies* when their files are
byte-identical (same size, then same sha256) or their stored features and codes are bit-identical (the same
pixels saved twice). Pairs are joined into groups with a union-find: a group is connected, not a clique.

An index written before two-stage search stores no features; there, near copies are pairs within
`max_distance` bits of each other, a much coarser test (the output says so).

The default threshold is measured by benchmarks/bench_duplicates.py (copies of CIFAR-10 images re-encoded,
resized and cropped; precision and recall of the pairs in BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bganhash._validation import InputError
from bganhash.codes import hamming_distances

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_THRESHOLD", "DuplicateGroup", "DuplicateReport", "UnionFind",
           "find_duplicates", "identical_files", "near_pairs", "pair_groups"]

DEFAULT_THRESHOLD = 0.85  # cosine similarity of the stored features; see BENCHMARKS.md ("Duplicates")
DEFAULT_CANDIDATES = 100  # Hamming-nearest codes compared with each image
CODES_ONLY_DISTANCE_FRACTION = 1 / 16  # without stored features: near = within n_bits / 16 bits
THRESHOLD_EXPLAINED = (
    "cosine similarity (-1..1) of the compact image features the index stores; two images at or above it are "
    "near copies. Measured on 1,500 CIFAR-10 images enlarged to 128 px and copies of 500 of them (re-encoded at "
    "JPEG quality 50, resized to 3/4, cropped to 90%, or all three): 0.85 groups 90% of the copies with their "
    "original at 96% pair precision, 0.90 finds 78% at 98.5%, 0.80 finds 97% at 83% (BENCHMARKS.md, "
    "\"Duplicates\"). Lower finds more copies and more false matches (look-alike pictures chain into large "
    "groups), higher fewer of both"
)
_BLOCK = 256  # images whose candidates are compared at once
_STATS_MEMBERS = 1000  # a group's similarity and distance statistics are computed over at most this many


class UnionFind:
    """Disjoint sets over 0..n-1 (union by size, path halving)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = int(parent[item])
        return int(item)

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if self.size[root_a] < self.size[root_b]:
            root_a, root_b = root_b, root_a
        self.parent[root_b] = root_a
        self.size[root_a] += self.size[root_b]

    def groups(self) -> list[list[int]]:
        """The sets of more than one element, each sorted, in order of their smallest element."""
        members: dict[int, list[int]] = defaultdict(list)
        for item in range(len(self.parent)):
            members[self.find(item)].append(item)
        return sorted((rows for rows in members.values() if len(rows) > 1), key=lambda rows: rows[0])


@dataclass
class DuplicateGroup:
    """Images of one collection that are copies of each other: ids and paths (relative to the root), sorted
    by path; `kind` "exact" when every member is identical (file bytes or features), else "near";
    `min_similarity` the lowest cosine similarity between two members (None without stored features) and
    `max_distance` the largest Hamming distance between two members."""

    kind: str
    ids: list[int]
    paths: list[str]
    min_similarity: float | None
    max_distance: int

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_images": len(self.ids), "min_similarity": self.min_similarity,
                "max_distance": self.max_distance,
                "images": [{"id": i, "path": p} for i, p in zip(self.ids, self.paths)]}


@dataclass
class DuplicateReport:
    """What `find_duplicates` found, and how: `compared` is "features" (cosine similarity of the stored
    features) or "codes" (Hamming distance alone, for an index without stored features)."""

    n_images: int
    root: str
    compared: str
    threshold: float | None
    max_distance: int | None
    candidates: int
    hashed_files: int
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def n_copies(self) -> int:
        """Images that are a copy of another one: every member of a group but one."""
        return sum(len(group) - 1 for group in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "root": self.root, "compared": self.compared,
                "threshold": self.threshold, "max_distance": self.max_distance, "candidates": self.candidates,
                "hashed_files": self.hashed_files, "n_groups": len(self.groups), "n_copies": self.n_copies,
                "n_exact_groups": sum(group.kind == "exact" for group in self.groups),
                "groups": [group.to_dict() for group in self.groups]}


def _rows_of_ids(collection: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised id -> row lookup (-1 for -1)."""
    order = np.argsort(collection.ids, kind="stable")
    sorted_ids = collection.ids[order]

    def rows(ids: np.ndarray) -> np.ndarray:
        positions = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where((ids >= 0) & (sorted_ids[positions] == ids), order[positions], -1)

    return rows


def near_pairs(collection: Any, *, min_similarity: float | None, candidates: int = DEFAULT_CANDIDATES,
               max_distance: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows (a < b) among each image's `candidates` Hamming-nearest codes that pass the tests:
    cosine similarity of the stored features >= `min_similarity` (when the collection stores features and it
    is not None) and Hamming distance <= `max_distance` (when given). Returns (a, b, similarity, distance),
    similarity NaN without features; each pair once."""
    n = len(collection)
    use_features = collection.vectors is not None and min_similarity is not None
    if n < 2 or (not use_features and max_distance is None):
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32), np.empty(0, np.int32)
    k = min(int(candidates) + 1, n)  # each image finds itself too
    rows_of = _rows_of_ids(collection)
    found_a, found_b, found_s, found_d = [], [], [], []
    for start in range(0, n, _BLOCK):
        rows = np.arange(start, min(n, start + _BLOCK))
        distances, ids = collection.index.search_packed(collection.codes[rows], k)
        other = rows_of(ids)
        keep = (other >= 0) & (other != rows[:, None])
        if max_distance is not None:
            keep &= distances <= max_distance
        if use_features:
            vectors = collection.vectors
            mine = vectors[rows].astype(np.float32)
            theirs = vectors[np.where(other >= 0, other, 0)].astype(np.float32)
            similarity = np.einsum("qd,qcd->qc", mine, theirs)
            keep &= similarity >= min_similarity
        else:
            similarity = np.full(distances.shape, np.nan, np.float32)
        query, slot = np.nonzero(keep)
        a, b = rows[query], other[query, slot]
        found_a.append(np.minimum(a, b))
        found_b.append(np.maximum(a, b))
        found_s.append(similarity[query, slot].astype(np.float32))
        found_d.append(distances[query, slot].astype(np.int32))
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    _, first = np.unique(a * n + b, return_index=True)
    return a[first], b[first], np.concatenate(found_s)[first], np.concatenate(found_d)[first]


def identical_features(collection: Any) -> list[list[int]]:
    """Groups of rows whose codes and stored features are bit-identical (only codes without features)."""
    keys = collection.codes
    if collection.vectors is not None:
        keys = np.hstack([keys, np.ascontiguousarray(collection.vectors).view(np.uint8)])
    if len(keys) < 2:
        return []
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    members: dict[int, list[int]] = defaultdict(list)
    for row in np.flatnonzero(counts[inverse.ravel()] > 1):
        members[int(inverse.ravel()[row])].append(int(row))
    return list(members.values())


def identical_files(collection: Any) -> tuple[list[list[int]], int]:
    """Groups of rows whose original files are byte-identical, and how many files were hashed: only files
    that share their size (read from the index's change stamps) with another one are read and hashed;
    files that are gone are left out."""
    by_size: dict[str, list[int]] = defaultdict(list)
    for row, stamp in enumerate(collection.stamps):
        by_size[str(stamp).split(":", 1)[0]].append(row)
    by_digest: dict[str, list[int]] = defaultdict(list)
    hashed = 0
    for rows in by_size.values():
        if len(rows) < 2:
            continue
        for row in rows:
            try:
                data = collection.original(int(collection.ids[row]))
            except InputError:
                continue
            hashed += 1
            by_digest[hashlib.sha256(data).hexdigest()].append(row)
    return [rows for rows in by_digest.values() if len(rows) > 1], hashed


def pair_groups(n: int, a: np.ndarray, b: np.ndarray, exact: list[list[int]] = ()) -> list[list[int]]:
    """Connected groups (lists of rows, each sorted) of the pairs (a[i], b[i]) and the `exact` row groups."""
    sets = UnionFind(n)
    for row_a, row_b in zip(a.tolist(), b.tolist()):
        sets.union(row_a, row_b)
    for rows in exact:
        for row in rows[1:]:
            sets.union(rows[0], row)
    return sets.groups()


def find_duplicates(collection: Any, *, threshold: float = DEFAULT_THRESHOLD, candidates: int = DEFAULT_CANDIDATES,
                    max_distance: int | None = None, hash_files: bool = True) -> DuplicateReport:
    """The groups of exact and near copies in `collection` (a loaded `Collection`).

    threshold: the cosine similarity of the stored features at or above which two images are near copies.
    candidates: Hamming-nearest codes of each image compared with it (more finds copies whose codes moved
    further, at more time). max_distance: also require at most this Hamming distance; for an index without
    stored features it is the only test (default there: n_bits / 16). hash_files: read and hash the files
    that share a size with another to find byte-identical copies.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold={threshold} must be a cosine similarity between -1 and 1")
    if int(candidates) < 1:
        raise InputError(f"candidates={candidates} must be at least 1")
    if max_distance is not None and not 0 <= int(max_distance) <= collection.n_bits:
        raise InputError(f"max_distance={max_distance} must be between 0 and {collection.n_bits} (the code length)")
    compared = "features" if collection.vectors is not None else "codes"
    if compared == "codes" and max_distance is None:
        max_distance = max(0, int(collection.n_bits * CODES_ONLY_DISTANCE_FRACTION))
    a, b, _, _ = near_pairs(collection, min_similarity=float(threshold) if compared == "features" else None,
                            candidates=int(candidates), max_distance=max_distance)
    same_files, hashed = identical_files(collection) if hash_files else ([], 0)
    same_features = identical_features(collection) if compared == "features" else []
    exact_sets = UnionFind(len(collection))
    for rows in same_files + same_features:
        for row in rows[1:]:
            exact_sets.union(rows[0], row)
    groups = []
    for rows in pair_groups(len(collection), a, b, same_files + same_features):
        kind = "exact" if len({exact_sets.find(row) for row in rows}) == 1 else "near"
        groups.append(_group(collection, rows, kind))
    groups.sort(key=lambda group: (group.kind != "exact", -len(group), group.paths[0]))
    return DuplicateReport(n_images=len(collection), root=str(collection.root), compared=compared,
                           threshold=float(threshold) if compared == "features" else None,
                           max_distance=max_distance, candidates=int(candidates), hashed_files=hashed, groups=groups)


def _group(collection: Any, rows: list[int], kind: str) -> DuplicateGroup:
    """A DuplicateGroup of `rows`, sorted by path, with its members' least similarity and largest distance."""
    rows = sorted(rows, key=lambda row: collection.paths[row])
    sample = np.asarray(rows[:_STATS_MEMBERS])
    codes = collection.codes[sample]
    max_distance = int(hamming_distances(codes, codes).max())
    min_similarity = None
    if collection.vectors is not None:
        vectors = collection.vectors[sample].astype(np.float32)
        min_similarity = round(float(np.clip((vectors @ vectors.T).min(), -1.0, 1.0)), 4)
    return DuplicateGroup(kind=kind, ids=[int(collection.ids[row]) for row in rows],
                          paths=[collection.paths[row] for row in rows],
                          min_similarity=min_similarity, max_distance=max_distance)
