"""Reading a built collection: `Collection` (the loaded index directory) searched by image, code or id,
with the paths, thumbnails and original files of its images."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import read_json, read_safetensors
from bganhash._validation import InputError
from bganhash.collection.store import GENERATION_FILE, MANIFEST_FILE, WHAT, read_manifest, verify_files
from bganhash.features.config import FeatureConfig
from bganhash.index import Index
from bganhash.index.rerank import FeatureReducer, default_candidates, rerank
from bganhash.pipeline import ImagePipeline
from bganhash.registry import load_hasher

__all__ = ["Collection", "LinkOutsideRoot", "Match"]


class LinkOutsideRoot(InputError):
    """An indexed path that is now a link to a file outside the collection root: it is not served."""


@dataclass
class Match:
    """One search result: the image's id in the collection, its path (relative to the root), its Hamming
    distance to the query, and the cosine similarity it was re-ranked by (None without the second stage)."""

    id: int
    path: str
    distance: int
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Collection:
    """A loaded index directory: `hasher`, `index` (a bganhash.Index over the codes), `paths` and thumbnails.

    Search by image with `search_images`, by an indexed image with `search_ids`, or do it by hand:
    `codes = collection.encode_images(images)` then `distances, ids = collection.index.search(codes, k)`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], items: dict[str, Any], codes: np.ndarray,
                 ids: np.ndarray, hasher: Any, index: Any = None, reducer: FeatureReducer | None = None,
                 vectors: np.ndarray | None = None) -> None:
        self.path = path
        self.reducer, self.vectors = reducer, vectors  # the second stage (None: an index from before it)
        self.candidates = default_candidates(len(codes))  # what a search re-ranks (search --candidates)
        self.manifest = manifest
        self.generation = int(manifest["generation"])
        self.n_bits = int(manifest["n_bits"])
        self.root = manifest["root"]
        self.hasher = hasher
        try:
            self.feature_config = FeatureConfig(**manifest["feature_config"]).validate()
        except (TypeError, InputError) as exc:
            raise InputError(f"{path / MANIFEST_FILE} has an unusable feature_config: {exc}") from None
        self.pipeline = ImagePipeline(hasher, self.feature_config)  # queries are encoded as the images were
        self.ids = ids
        self.codes = codes
        self.paths: list[str] = items["paths"]
        self.stamps: list[str] = items["stamps"]  # "size:mtime" of a file, "size:CRC" of a zip member
        self._row_of_id = {int(i): row for row, i in enumerate(ids)}
        self._thumbnail_refs = items["thumbnails"]
        if not all(isinstance(name, str) and GENERATION_FILE.match(name) for name in items["segments"]):
            raise InputError(f"{path / manifest['items']} is corrupted: it names files that are not the index's own")
        self._segment_files = [path / name for name in items["segments"]]
        self._segment_fds = [os.open(file, os.O_RDONLY) for file in self._segment_files]
        self.backend = manifest.get("backend", "flat")
        if index is None:
            index = Index(self.n_bits, backend=self.backend)
            index.add_packed(codes, ids)
        self.index = index

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Collection:
        """Open the index directory `path` (checksums verified unless `verify=False`); InputError if unusable."""
        directory = Path(path)
        manifest = read_manifest(directory)
        if verify:
            verify_files(directory, manifest)
        items = read_json(directory / manifest["items"], WHAT)
        arrays = read_safetensors(directory / manifest["codes"], WHAT)
        codes, ids = arrays.get("codes"), arrays.get("ids")
        lengths = {len(items.get(key, ())) for key in ("paths", "stamps", "thumbnails")}
        if codes is None or ids is None or lengths != {len(ids)} or len(codes) != len(ids):
            raise InputError(f"{directory} is inconsistent: codes, ids, paths and thumbnails differ in length")
        hasher = load_hasher(directory / manifest["model"], manifest["method"])
        index = None
        if manifest.get("index"):
            index = Index.load(directory / manifest["index"])
            if index.n_bits != int(manifest["n_bits"]) or not np.array_equal(index.ids, ids):
                raise InputError(f"{directory} is inconsistent: {manifest['index']} does not hold the codes' ids")
        reducer, vectors = None, arrays.get("vectors")
        if vectors is not None:
            reducer = FeatureReducer.from_arrays(arrays, str(directory / manifest["codes"]))
            if vectors.shape != (len(ids), reducer.dimensions):
                raise InputError(f"{directory} is inconsistent: {vectors.shape[0]} stored feature rows for "
                                 f"{len(ids)} images")
        return cls(directory, manifest, items, codes, ids.astype(np.int64), hasher, index, reducer, vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"Collection({str(self.path)!r}, n={len(self)}, n_bits={self.n_bits}, "
                f"method={self.manifest['method']!r})")

    def close(self) -> None:
        """Release the open thumbnail files."""
        for fd in self._segment_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._segment_fds = []

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- encoding and search ---------------------------------------------------------------------

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Codes (n, n_bits) int8 of decoded (H, W, 3) uint8 images, through the collection's pipeline."""
        return self.pipeline.encode_images(images)

    @property
    def reranked(self) -> bool:
        """Whether searches re-rank Hamming candidates by cosine similarity (indexes written since two-stage
        search store the compact features it needs; older ones search by Hamming distance alone)."""
        return self.vectors is not None

    def search_codes(self, codes: np.ndarray, k: int) -> list[list[Match]]:
        """The k nearest indexed images of each {-1,+1} code row by Hamming distance (ties: index order)."""
        return self._matches(*self.index.search(codes, k))

    def _matches(self, distances: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None) -> list[list[Match]]:
        scores = np.full(ids.shape, np.nan) if scores is None else scores
        return [
            [Match(int(i), self.paths[self._row_of_id[int(i)]], int(d), None if np.isnan(s) else round(float(s), 6))
             for d, i, s in zip(row_d, row_i, row_s) if i >= 0]
            for row_d, row_i, row_s in zip(distances, ids, scores)
        ]

    def encode_queries(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """What a search needs of decoded query images: their codes, and their compact features when the
        index re-ranks (None otherwise). The backbone runs once per image."""
        if not self.reranked:
            return self.encode_images(images), None
        features = self.pipeline.features_of_images(images)
        codes = self.encode_images(images) if self.pipeline.encodes_pixels else self.pipeline.encode_features(features)
        return codes, self.reducer.reduce(features)

    def search_encoded(self, codes: np.ndarray, vectors: np.ndarray | None, k: int) -> list[list[Match]]:
        """Search with what `encode_queries` returned: the `candidates` nearest codes re-ranked by cosine
        similarity of the compact features, or the k nearest codes by Hamming distance without them."""
        if vectors is None:
            return self.search_codes(codes, k)
        return self._reranked(self.index.search(codes, max(k, self.candidates)), vectors, k)

    def search_images(self, images: Sequence[np.ndarray], k: int = 10) -> list[list[Match]]:
        """The k nearest indexed images of each decoded query image (two stages when the index has features)."""
        return self.search_encoded(*self.encode_queries(images), k)

    def search_ids(self, ids: Sequence[int], k: int = 10) -> list[list[Match]]:
        """The k nearest indexed images of images already in the collection (each finds itself first)."""
        rows = [self.row_of(i) for i in ids]
        if not self.reranked:
            return self._matches(*self.index.search_packed(self.codes[rows], k))
        candidates = self.index.search_packed(self.codes[rows], max(k, self.candidates))
        return self._reranked(candidates, self.vectors[rows], k)

    def _reranked(self, candidates: tuple[np.ndarray, np.ndarray], query_vectors: np.ndarray,
                  k: int) -> list[list[Match]]:
        def vectors_of(ids: np.ndarray) -> np.ndarray:
            return self.vectors[[self._row_of_id[int(i)] for i in ids]]

        return self._matches(*rerank(*candidates, query_vectors, vectors_of, k))

    # ---- per-image access ------------------------------------------------------------------------

    def row_of(self, image_id: int) -> int:
        """Position of `image_id` in `ids` / `paths`; InputError for an id not in the collection."""
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise InputError(f"id={image_id!r} must be an integer")
        row = self._row_of_id.get(int(image_id))
        if row is None:
            raise InputError(f"no image with id {image_id} in this index")
        return row

    def path_of(self, image_id: int) -> str:
        """The image's path relative to the collection root."""
        return self.paths[self.row_of(image_id)]

    def thumbnail(self, image_id: int) -> bytes:
        """The JPEG thumbnail of `image_id`; refused, as `original` is, when the image's path is now a link out of
        the collection root (an index built before links were checked may hold one)."""
        if self._links_outside_root(self.path_of(image_id)):
            raise LinkOutsideRoot(f"image {image_id} is a link to a file outside {self.root}; it is not served")
        segment, offset, length = self._thumbnail_refs[self.row_of(image_id)]
        if not 0 <= segment < len(self._segment_files):
            raise InputError(f"the thumbnail of image {image_id} names segment {segment}, which {self.path} "
                             "does not have")
        segment_file = self._segment_files[segment]
        try:
            data = os.pread(self._segment_fds[segment], length, offset)
        except (OSError, ValueError, OverflowError) as exc:
            raise InputError(f"cannot read the thumbnail of image {image_id} from {segment_file}: {exc}") from None
        if len(data) != length:
            raise InputError(f"the thumbnail of image {image_id} is cut short in {segment_file}")
        return data

    def original(self, image_id: int) -> bytes:
        """The original file's bytes, read only from inside the collection root (InputError if gone)."""
        relative = self.path_of(image_id)
        root = Path(self.root)
        if root.is_file():
            try:
                with zipfile.ZipFile(root) as archive:
                    return archive.read(relative)
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise InputError(f"cannot read {relative} from {root}: {exc}") from exc
        resolved_root = root.resolve()
        target = (resolved_root / relative).resolve()
        if not target.is_relative_to(resolved_root) or not target.is_file():
            raise InputError(f"{relative} is no longer a file inside {root}")
        return target.read_bytes()

    def _links_outside_root(self, relative: str) -> bool:
        """Whether `relative` is an entry of the root folder that resolves outside it (the one link policy of
        indexing, thumbnails and originals: follow a link only when it stays inside the root)."""
        root = Path(self.root)
        entry = root / relative
        if not root.is_dir() or not os.path.lexists(entry):  # a zip, or a file gone: nothing to follow
            return False
        return not entry.resolve().is_relative_to(root.resolve())

    @property
    def report(self) -> dict[str, Any]:
        """The last build's report: unreadable files and what changed."""
        return read_json(self.path / self.manifest["report"], WHAT)
