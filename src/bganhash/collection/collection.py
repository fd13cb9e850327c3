"""A searchable image collection on disk: one index directory with the model, codes, paths and thumbnails.

Layout of `my.index/` (every file immutable once written, named by the generation that wrote it):

    manifest.json             the pointer: format, version, generation, and the sha256 of every file below
    model-000001/             the saved hasher (JSON + safetensors)
    codes-000002.safetensors  packed codes and their ids
    index-000002.bgidx        with an approximate backend (ivf, hnsw, mih): the saved bganhash.Index, structure included
    items-000002.json         id -> path relative to the collection root, a change stamp, thumbnail location
    thumbs-000001.bin         JPEG thumbnails, concatenated (one segment per generation that added images)
    report-000002.json        files that could not be read, and what the update changed

An update writes the files of a new generation beside the old ones, then replaces manifest.json in one
atomic rename: a process killed at any point leaves the previous complete version loadable. Files no
manifest refers to are deleted by the next successful write.

The manifest names the search backend ("flat", exact, unless the index was built with e.g. "hnsw:32"; format
version 1 had no backend and is read as "flat").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import safetensors.numpy

from bganhash._io import atomic_write, read_versioned_json, write_json
from bganhash._validation import InputError, check_positive_int
from bganhash.registry import HASHERS, create_hasher, hasher_name, load_hasher

if TYPE_CHECKING:
    from bganhash.hashers.base import Hasher

FORMAT_NAME = "bganhash-collection"
FORMAT_VERSION = 2  # 2: the manifest names the search backend, and may list an index-NNNNNN.bgidx
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
PAUSE_AFTER_ENV = "BGANHASH_PAUSE_AFTER_FILES"  # crash-safety tests: stall a write after this many files
_GENERATION_FILE = re.compile(r"^(model|codes|items|thumbs|report|index)-(\d{6})(\.[a-z]+)?$")
_THUMBNAIL_QUALITY = 85
_HASH_CHUNK = 1 << 20


@dataclass
class BuildConfig:
    """How `build_collection` trains the hasher (when no model is given) and makes thumbnails."""

    method: str = "bgan"
    n_bits: int = 64
    max_train: int = 10_000
    thumbnail_size: int = 128
    seed: int = 0
    hasher_params: dict[str, Any] = field(default_factory=dict)  # e.g. BGAN overrides {"epochs_per_stage": 2}
    # the search backend, e.g. "hnsw:32"; None: "flat" for a new index, the index's own for an update
    backend: str | None = None

    def validate(self) -> BuildConfig:
        from bganhash.index.index import parse_backend

        if self.method not in HASHERS:
            raise InputError(f"method={self.method!r} must be one of {HASHERS}")
        if self.backend is not None:
            parse_backend(self.backend)
        check_positive_int(self.n_bits, "n_bits")
        check_positive_int(self.max_train, "max_train", minimum=2)
        check_positive_int(self.thumbnail_size, "thumbnail_size", minimum=16)
        check_positive_int(self.seed, "seed", minimum=0)
        return self


@dataclass
class BuildSummary:
    """What one `build_collection` call did."""

    path: str
    generation: int
    n_images: int
    added: int
    removed: int
    unchanged: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    trained: bool = False
    seconds: float = 0.0
    backend: str = "flat"

    def to_dict(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return document


@dataclass
class Match:
    """One search result: the image's id in the collection, its path (relative to the root) and distance."""

    id: int
    path: str
    distance: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- queries

QUERY_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
QUERY_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
               "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
DEFAULT_MAX_BYTES = 20_000_000


class QueryImageError(InputError):
    """A query image that cannot be used; `status` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_query(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_side: int | None = None) -> np.ndarray:
    """Decode untrusted image bytes into an (H, W, 3) uint8 array, or raise QueryImageError saying why.

    Only common raster formats are opened; the pixel count is checked from the header before decoding;
    JPEGs are decoded at a reduced scale no smaller than 4 x `min_side` (the backbone's input size) when given,
    which keeps a large photo's decoding cheap next to the backbone.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from bganhash.datasets.images import convert_to_rgb

    if not data:
        raise QueryImageError("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise QueryImageError(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=QUERY_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise QueryImageError(f"the image is {width}x{height} = {width * height:,} pixels; the limit "
                                          f"is {max_pixels:,} (a decompression bomb?)", status=413)
                if image.mode not in QUERY_MODES:
                    raise QueryImageError(f"image mode {image.mode!r} is not supported; use one of "
                                          f"{', '.join(QUERY_MODES)}", status=415)
                if min_side and image.format == "JPEG":
                    image.draft("RGB", (4 * min_side, 4 * min_side))
                image.load()
                return np.array(convert_to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)
    except QueryImageError:
        raise
    except UnidentifiedImageError:
        raise QueryImageError(f"not an image in a supported format ({', '.join(QUERY_FORMATS)})",
                              status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise QueryImageError(f"the image has too many pixels (a decompression bomb): {exc}", status=413) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ... on broken files
        raise QueryImageError(f"the image is truncated or corrupted ({type(exc).__name__}: {exc})") from None


def read_query_file(path: str | os.PathLike, **limits: Any) -> np.ndarray:
    """Decode the query image file `path` with the same checks as an upload."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return decode_query(data, **limits)
    except QueryImageError as exc:
        raise QueryImageError(f"{path}: {exc}", exc.status) from None


# ---------------------------------------------------------------------------------------------- reading


class Collection:
    """A loaded index directory: `hasher`, `index` (a bganhash.Index over the codes), `paths` and thumbnails.

    Search by image with `search_images`, by an indexed image with `search_ids`, or do it by hand:
    `codes = collection.encode_images(images)` then `distances, ids = collection.index.search(codes, k)`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], items: dict[str, Any], codes: np.ndarray,
                 ids: np.ndarray, hasher: Any, index: Any = None) -> None:
        from bganhash.features.config import FeatureConfig
        from bganhash.index.index import Index

        self.path = path
        self.manifest = manifest
        self.generation = int(manifest["generation"])
        self.n_bits = int(manifest["n_bits"])
        self.root = manifest["root"]
        self.hasher = hasher
        try:
            self.feature_config = FeatureConfig(**manifest["feature_config"]).validate()
        except (TypeError, InputError) as exc:
            raise InputError(f"{path / MANIFEST_FILE} has an unusable feature_config: {exc}") from None
        self.ids = ids
        self.codes = codes
        self.paths: list[str] = items["paths"]
        self._row_of_id = {int(i): row for row, i in enumerate(ids)}
        self._thumbnail_refs = items["thumbnails"]
        if not all(isinstance(name, str) and _GENERATION_FILE.match(name) for name in items["segments"]):
            raise InputError(f"{path / manifest['items']} is corrupted: it names files that are not the index's own")
        self._segment_fds = [os.open(path / name, os.O_RDONLY) for name in items["segments"]]
        self.backend = manifest.get("backend", "flat")
        if index is None:
            index = Index(self.n_bits, backend=self.backend)
            index.add_packed(codes, ids)
        self.index = index
        self._backbone = None

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Collection:
        """Open the index directory `path` (checksums verified unless `verify=False`); InputError if unusable."""
        directory = Path(path)
        manifest = read_manifest(directory)
        if verify:
            verify_files(directory, manifest)
        items = _read_json(directory / manifest["items"])
        arrays = _read_safetensors(directory / manifest["codes"])
        codes, ids = arrays.get("codes"), arrays.get("ids")
        lengths = {len(items.get(key, ())) for key in ("paths", "stamps", "thumbnails")}
        if codes is None or ids is None or lengths != {len(ids)} or len(codes) != len(ids):
            raise InputError(f"{directory} is inconsistent: codes, ids, paths and thumbnails differ in length")
        hasher = load_hasher(directory / manifest["model"], manifest["method"])
        index = None
        if manifest.get("index"):
            from bganhash.index.index import Index

            index = Index.load(directory / manifest["index"])
            if index.n_bits != int(manifest["n_bits"]) or not np.array_equal(index.ids, ids):
                raise InputError(f"{directory} is inconsistent: {manifest['index']} does not hold the codes' ids")
        return cls(directory, manifest, items, codes, ids.astype(np.int64), hasher, index)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, n={len(self)}, n_bits={self.n_bits}, method={self.manifest['method']!r})"

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
        """Codes (n, n_bits) int8 of decoded (H, W, 3) uint8 images: backbone features, then the hasher."""
        features = self.extract_features(images)
        return np.asarray(self.hasher.encode(features), dtype=np.int8)

    def extract_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone features of decoded images, preprocessed exactly as the indexed images were."""
        import torch

        from bganhash.features.backbones import create_backbone
        from bganhash.features.extract import preprocess_images

        if not len(images):
            raise InputError("no images to encode")
        if self._backbone is None:
            self._backbone = create_backbone(self.feature_config.backbone)
        backbone, config = self._backbone, self.feature_config
        with torch.inference_mode():
            batch = preprocess_images(list(images), config.image_size, backbone.input_mean, backbone.input_std,
                                      config.resize)
            return backbone.forward_features(batch).numpy()

    def search_codes(self, codes: np.ndarray, k: int) -> list[list[Match]]:
        """The k nearest indexed images of each {-1,+1} code row by Hamming distance (ties: index order)."""
        return self._matches(*self.index.search(codes, k))

    def _matches(self, distances: np.ndarray, ids: np.ndarray) -> list[list[Match]]:
        return [
            [Match(int(i), self.paths[self._row_of_id[int(i)]], int(d)) for d, i in zip(row_d, row_i) if i >= 0]
            for row_d, row_i in zip(distances, ids)
        ]

    def search_images(self, images: Sequence[np.ndarray], k: int = 10) -> list[list[Match]]:
        """The k nearest indexed images of each decoded query image."""
        return self.search_codes(self.encode_images(images), k)

    def search_ids(self, ids: Sequence[int], k: int = 10) -> list[list[Match]]:
        """The k nearest indexed images of images already in the collection (each finds itself first)."""
        rows = [self.row_of(i) for i in ids]
        return self._matches(*self.index.search_packed(self.codes[rows], k))

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
        """The JPEG thumbnail of `image_id`."""
        segment, offset, length = self._thumbnail_refs[self.row_of(image_id)]
        data = os.pread(self._segment_fds[segment], length, offset)
        if len(data) != length:
            raise InputError(f"the thumbnail of image {image_id} is cut short in {self.path}")
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

    @property
    def report(self) -> dict[str, Any]:
        """The last build's report: unreadable files and what changed."""
        return _read_json(self.path / self.manifest["report"])


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of index directory `directory`, checked for our format and a readable version."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise InputError(f"{directory} is not an index directory (build one with `bganhash index`)")
    manifest = read_versioned_json(path, FORMAT_NAME, FORMAT_VERSION, "a bganhash index (its manifest)")
    required = ("generation", "n_bits", "method", "root", "feature_config", "model", "codes", "items", "report",
                "files", "next_id")
    missing = [key for key in required if key not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise InputError(f"{path} is corrupted: it lacks {missing or ['files']}")
    names = [manifest[key] for key in ("model", "codes", "items", "report", "index") if key in manifest]
    if not all(isinstance(name, str) and _GENERATION_FILE.match(name) for name in names) or not all(
            isinstance(entry, dict) and _GENERATION_FILE.match(_top_name(name))
            for name, entry in manifest["files"].items()):
        raise InputError(f"{path} is corrupted: it names files that are not the index's own")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its recorded size and sha256."""
    for name, expected in manifest["files"].items():
        path = directory / name
        if not _inside(directory, path) or not path.is_file():
            raise InputError(f"{directory} is incomplete: {name} is missing")
        if path.stat().st_size != expected.get("bytes") or file_sha256(path) != expected.get("sha256"):
            raise InputError(f"{path} is corrupted or foreign (its checksum does not match the manifest); "
                             "rebuild the index with `bganhash index`")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- building


def build_collection(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    config: BuildConfig | None = None,
    feature_config: Any = None,
    update: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Index the images of folder or zip `source` into directory `out`.

    Without `update`, `out` must not hold an index yet; the hasher is `model` (a saved hasher directory) or
    one trained on the collection (`config.method`, `config.n_bits`). With `update`, only images that are
    new or changed since the last build are encoded, and images that disappeared are dropped.
    """
    from bganhash.datasets.folder import list_image_files
    from bganhash.features.extract import extract_features

    start = time.perf_counter()
    config = (config or BuildConfig()).validate()
    out = Path(out)
    root = Path(source).resolve()
    members = list_image_files(root)
    created = not out.exists()
    try:
        with _writer_lock(out):
            previous = _previous_state(out, root, update, model)
            stamp_of = _stamps(root, members)
            kept_rows, new_members = _diff(previous, members, stamp_of)
            dataset, unreadable = _readable_dataset(root, new_members)
            if previous is None and dataset is None:
                raise InputError(f"none of the {len(members)} image files in {source} could be read"
                                 if members else f"no image files found in {source}")
            state = previous or _fresh_state(root, model, feature_config)
            if config.backend is not None:
                from bganhash.index.index import parse_backend

                state.backend = str(parse_backend(config.backend))
            features = None if dataset is None else extract_features(dataset, state.feature_config, progress=progress)
            trained = state.hasher is None
            if trained:
                state.hasher = _train_hasher(dataset, features, state, config, progress)
            summary = BuildSummary(path=str(out), generation=state.generation + 1, n_images=0, added=0, removed=0,
                                   unchanged=len(kept_rows), unreadable=[(str(p), str(r)) for p, r in unreadable],
                                   trained=trained, backend=state.backend)
            _write_generation(out, state, kept_rows, dataset, _encode(features, state), stamp_of, summary, config,
                              new_model=previous is None, started=start)
    except BaseException:
        if created:  # leave nothing behind when a first build fails before its manifest exists
            import shutil

            if not (out / MANIFEST_FILE).exists():
                shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


@dataclass
class _State:
    """The previous version of an index (or an empty one) that a build extends."""

    root: Path
    generation: int
    next_id: int
    method: str | None
    n_bits: int | None
    feature_config: Any
    hasher: Any = None
    model_name: str | None = None
    created: str | None = None
    files: dict[str, Any] = field(default_factory=dict)
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    codes: np.ndarray | None = None
    paths: list[str] = field(default_factory=list)
    stamps: list[str] = field(default_factory=list)
    thumbnails: list[list[int]] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    backend: str = "flat"


def _previous_state(out: Path, root: Path, update: bool, model: Any) -> _State | None:
    if not (out / MANIFEST_FILE).exists():
        foreign = [p.name for p in out.iterdir() if p.name != LOCK_FILE and not _is_ours(p.name)]
        if foreign:
            raise InputError(f"{out} exists and is not a bganhash index (it holds {foreign[0]}); choose another --out")
        return None
    if not update:
        raise InputError(f"{out} already holds an index; pass --update to add new images, or choose another --out")
    if model is not None:
        raise InputError(f"--model cannot replace the model of the existing index {out}; build a new index instead")
    collection = Collection.load(out)
    try:
        if Path(collection.root) != root:
            raise InputError(f"{out} indexes {collection.root}, not {root}; update it from the same folder")
        items = _read_json(out / collection.manifest["items"])
        manifest = collection.manifest
        return _State(
            root=root, generation=collection.generation, next_id=int(manifest["next_id"]), method=manifest["method"],
            n_bits=collection.n_bits, feature_config=collection.feature_config, hasher=collection.hasher,
            model_name=manifest["model"], created=manifest.get("created"), files=manifest["files"],
            ids=collection.ids, codes=collection.codes, paths=list(items["paths"]), stamps=list(items["stamps"]),
            thumbnails=[list(t) for t in items["thumbnails"]], segments=list(items["segments"]),
            backend=collection.backend,
        )
    finally:
        collection.close()


def _fresh_state(root: Path, model: Any, feature_config: Any) -> _State:
    """A new index's state; with a saved `model`, its hasher (and its feature config, unless one is given)."""
    from bganhash.features.config import FeatureConfig

    state = _State(root=root, generation=0, next_id=0, method=None, n_bits=None, feature_config=feature_config)
    if model is not None:
        state.hasher = load_hasher(model)
        state.method, state.n_bits = hasher_name(state.hasher), int(state.hasher.n_bits)
        own = getattr(state.hasher, "feature_config", None)
        if state.feature_config is None and own is not None:
            state.feature_config = own if isinstance(own, FeatureConfig) else FeatureConfig(**own)
    state.feature_config = state.feature_config or FeatureConfig()
    return state


def _stamps(root: Path, members: list[str]) -> dict[str, str]:
    """A change stamp per member: size and mtime of a file, size and CRC of a zip member."""
    if root.is_dir():
        stamps = {}
        for member in members:
            with contextlib.suppress(OSError):
                stat = os.stat(root / member)
                stamps[member] = f"{stat.st_size}:{stat.st_mtime_ns}"
        return stamps
    with zipfile.ZipFile(root) as archive:
        return {m: f"{archive.getinfo(m).file_size}:{archive.getinfo(m).CRC}" for m in members}


def _diff(previous: _State | None, members: list[str], stamp_of: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """Rows of the previous index to keep (same path, same stamp) and the members to encode anew."""
    members = [m for m in members if m in stamp_of]  # a file deleted while scanning is simply not there
    if previous is None:
        return np.empty(0, np.int64), members
    kept = [row for row, (p, s) in enumerate(zip(previous.paths, previous.stamps)) if stamp_of.get(p) == s]
    kept_paths = {previous.paths[row] for row in kept}
    return np.asarray(kept, dtype=np.int64), [m for m in members if m not in kept_paths]


def _readable_dataset(root: Path, members: list[str]) -> tuple[Any, list[tuple[str, str]]]:
    """A Dataset of the members that decode, and (path, reason) for those that do not."""
    from bganhash.datasets import Dataset
    from bganhash.datasets.folder import open_source, validate_members

    if not members:
        return None, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report lists unreadable files; no need to warn as well
        good, unreadable = validate_members(open_source(root, members), "skip", str(root))
    if not good:
        return None, list(unreadable)
    readable = [members[i] for i in good]
    return Dataset("folder", open_source(root, readable), readable, root=root), list(unreadable)


def _train_hasher(dataset: Any, features: np.ndarray, state: _State, config: BuildConfig, progress: bool) -> Hasher:
    """A hasher trained on (a random sample of at most max_train of) the new images' features."""
    picked = np.arange(len(dataset))
    if len(dataset) > config.max_train:
        picked = np.sort(np.random.default_rng(config.seed).choice(len(dataset), config.max_train, replace=False))
    train, features = dataset.subset(picked), features[picked]
    state.method, state.n_bits = config.method, config.n_bits
    if config.method == "bgan":
        from bganhash.bgan.estimator import BGANHasher

        params = {**small_collection_neighbourhood(len(train)), **config.hasher_params}
        hasher = BGANHasher(config.n_bits, random_state=config.seed, feature_config=state.feature_config, **params)
        return hasher.fit(features, images=train.to_array(size=32), progress=progress)
    return create_hasher(config.method, config.n_bits, random_state=config.seed, **config.hasher_params).fit(features)


def small_collection_neighbourhood(n_images: int) -> dict[str, int]:
    """BGAN's K1 = K2 for a collection of n images: 50 (the measured best) at 10,000 images, fewer below.

    K1 = K2 = 50 gives about 1,000 positives per image; in a collection of a few hundred images that is every
    image, and BGAN learns one code for all (measured: 120 digits, 1 distinct code; with K = 3, 102), so K
    shrinks with n: n / 200, at least 3.
    """
    k = max(3, min(50, n_images // 200))
    return {"k1": k, "k2": k}


def _encode(features: np.ndarray | None, state: _State) -> np.ndarray:
    """Packed codes of the new images' features."""
    from bganhash.codes import pack_codes

    if features is None:
        return np.empty((0, (state.n_bits + 7) // 8), np.uint8)
    return pack_codes(np.asarray(state.hasher.encode(features), dtype=np.int8))


def _write_generation(out: Path, state: _State, kept_rows: np.ndarray, dataset: Any, new_codes: np.ndarray,
                      stamp_of: dict[str, str], summary: BuildSummary, config: BuildConfig, new_model: bool,
                      started: float) -> None:
    """Write the next generation's files beside the current ones, then switch manifest.json to them;
    completes `summary` (counts, seconds), which is also the generation's report."""
    generation = summary.generation
    after_file = _crash_test_pause()
    _collect_garbage(out, keep=_referenced(out))
    if new_model or state.model_name is None:
        state.model_name = f"model-{generation:06d}"
        state.hasher.save(out / state.model_name)
        after_file()
    members = list(dataset.locations) if dataset is not None else []
    segments, thumbnails = _kept_thumbnails(state, kept_rows)
    if members:
        segment_name = f"thumbs-{generation:06d}.bin"
        refs = _write_thumbnails(out / segment_name, dataset, config.thumbnail_size)
        thumbnails += [[len(segments), offset, length] for offset, length in refs]
        segments.append(segment_name)
        after_file()
    ids = np.concatenate([state.ids[kept_rows], np.arange(state.next_id, state.next_id + len(members))])
    old_codes = state.codes[kept_rows] if state.codes is not None else new_codes[:0]
    codes = np.ascontiguousarray(np.concatenate([old_codes, new_codes]), dtype=np.uint8)
    names = {"codes": f"codes-{generation:06d}.safetensors", "items": f"items-{generation:06d}.json",
             "report": f"report-{generation:06d}.json"}
    with atomic_write(out / names["codes"]) as handle:
        handle.write(safetensors.numpy.save({"codes": codes, "ids": ids.astype(np.int64)}))
    after_file()
    if state.backend != "flat":  # an approximate backend's structure is built once here, not at every load
        from bganhash.index.index import Index

        index = Index(int(state.n_bits), state.backend)
        index.add_packed(codes, ids.astype(np.int64))
        names["index"] = f"index-{generation:06d}.bgidx"
        index.save(out / names["index"])
        del index
        after_file()
    write_json(out / names["items"], {
        "paths": [state.paths[r] for r in kept_rows] + members,
        "stamps": [state.stamps[r] for r in kept_rows] + [stamp_of[m] for m in members],
        "thumbnails": thumbnails,
        "segments": segments,
    })
    after_file()
    summary.n_images, summary.added, summary.removed = len(ids), len(members), len(state.ids) - len(kept_rows)
    summary.seconds = round(time.perf_counter() - started, 2)
    write_json(out / names["report"], summary.to_dict())
    after_file()
    files = {}
    for name in [*names.values(), *segments, *_model_files(out, state.model_name)]:
        files[name] = state.files.get(name) or {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
    manifest = _manifest(state, generation, names, dict(sorted(files.items())),
                         next_id=int(state.next_id + len(members)), n_images=len(ids))
    write_json(out / MANIFEST_FILE, manifest)  # the switch: one atomic rename
    _collect_garbage(out, keep=set(files))


def _kept_thumbnails(state: _State, kept_rows: np.ndarray) -> tuple[list[str], list[list[int]]]:
    """The thumbnail segments the kept images still use, and the kept images' refs renumbered to them."""
    used = sorted({state.thumbnails[r][0] for r in kept_rows})
    renumber = {old: new for new, old in enumerate(used)}
    segments = [state.segments[old] for old in used]
    return segments, [[renumber[state.thumbnails[r][0]], *state.thumbnails[r][1:]] for r in kept_rows]


def _manifest(state: _State, generation: int, names: dict[str, str], files: dict[str, Any], *, next_id: int,
              n_images: int) -> dict[str, Any]:
    import bganhash

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bganhash_version": bganhash.__version__,
        "generation": generation,
        "created": state.created or now,
        "updated": now,
        "root": str(state.root),
        "n_images": n_images,
        "next_id": next_id,
        "n_bits": int(state.n_bits),
        "method": state.method,
        "feature_config": dataclasses.asdict(state.feature_config),
        "model": state.model_name,
        "backend": state.backend,
        **names,
        "files": files,
    }


def _write_thumbnails(path: Path, dataset: Any, size: int) -> list[tuple[int, int]]:
    """Append a JPEG thumbnail of every dataset image to one file; returns (offset, length) per image."""
    from bganhash.datasets.base import progress as progress_bar

    refs = []
    offset = 0
    with atomic_write(path) as handle:
        for position in progress_bar(range(len(dataset)), len(dataset), "thumbnails"):
            data = make_thumbnail(dataset.read_image(position), size)
            handle.write(data)
            refs.append((offset, len(data)))
            offset += len(data)
    return refs


def make_thumbnail(image: np.ndarray, size: int) -> bytes:
    """JPEG bytes of `image` shrunk (never enlarged) to fit in size x size, aspect ratio kept."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=_THUMBNAIL_QUALITY)
    return buffer.getvalue()


def _model_files(out: Path, model_name: str) -> list[str]:
    directory = out / model_name
    return sorted(p.relative_to(out).as_posix() for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _top_name(name: str) -> str:
    return name.split("/", 1)[0]


def _is_ours(name: str) -> bool:
    """A generation file or a temporary left by an interrupted atomic write."""
    return bool(_GENERATION_FILE.match(name)) or (name.startswith(".") and name.endswith(".tmp"))


def _referenced(out: Path) -> set[str]:
    """Files the current manifest refers to (empty when there is none or it is unreadable)."""
    try:
        return set(read_manifest(out)["files"])
    except InputError:
        return set()


def _collect_garbage(out: Path, keep: set[str]) -> None:
    """Delete generation files and leftover temporaries that no manifest refers to."""
    import shutil

    kept_tops = {_top_name(name) for name in keep}
    for entry in out.iterdir():
        if _is_ours(entry.name) and entry.name not in kept_tops:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """One writer per index directory at a time (an advisory lock, released if the process dies)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out} is being written by another process; try again when it has finished") from None
        yield


def _crash_test_pause() -> Callable[[], None]:
    """A hook called after each file of a write; with $BGANHASH_PAUSE_AFTER_FILES=N it stalls after the N-th,
    so that a test can kill the process there, deterministically."""
    stall_after = int(os.environ.get(PAUSE_AFTER_ENV) or 0)
    written = 0

    def pause() -> None:
        nonlocal written
        written += 1
        if written == stall_after:
            time.sleep(3600)

    return pause


def _inside(directory: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path} is missing; the index is incomplete") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is corrupted: {exc}") from exc


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path} is missing; the index is incomplete") from None
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise InputError(f"{path} is corrupted: {exc}") from exc
