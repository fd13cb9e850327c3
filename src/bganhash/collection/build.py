"""Building and updating an index directory from a folder or zip of images: what changed since the last
generation (by path and change stamp), the hasher (given, kept or trained on the images), the new codes."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bganhash._io import read_json
from bganhash._validation import InputError, check_positive_int
from bganhash.codes import code_bytes, pack_codes
from bganhash.collection.generation import BuildSummary, State, write_generation
from bganhash.collection.reader import Collection
from bganhash.collection.store import LOCK_FILE, MANIFEST_FILE, WHAT, is_ours, writer_lock
from bganhash.datasets import Dataset
from bganhash.datasets.folder import open_source, scan_image_files, validate_members
from bganhash.features.config import FeatureConfig
from bganhash.features.sharding import is_main_process
from bganhash.hashers.base import Hasher
from bganhash.index import parse_backend
from bganhash.index.rerank import FeatureReducer
from bganhash.pipeline import ImagePipeline
from bganhash.registry import HASHERS, create_hasher, hasher_name

__all__ = ["BuildConfig", "build_collection", "collection_bgan_settings", "training_rows"]


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
        if self.method not in HASHERS:
            raise InputError(f"method={self.method!r} must be one of {HASHERS}")
        if self.backend is not None:
            parse_backend(self.backend)
        check_positive_int(self.n_bits, "n_bits")
        check_positive_int(self.max_train, "max_train", minimum=2)
        check_positive_int(self.thumbnail_size, "thumbnail_size", minimum=16)
        check_positive_int(self.seed, "seed", minimum=0)
        return self


def build_collection(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    config: BuildConfig | None = None,
    feature_config: Any = None,
    update: bool = False,
    progress: bool = True,
) -> BuildSummary | None:
    """Index the images of folder or zip `source` into directory `out`.

    Without `update`, `out` must not hold an index yet; the hasher is `model` (a saved hasher directory) or
    one trained on the collection (`config.method`, `config.n_bits`). With `update`, only images that are
    new or changed since the last build are encoded, and images that disappeared are dropped. Under
    torchrun every rank extracts its share of the features; rank 0 alone writes, and the others return None.
    """
    from bganhash.features.extract import extract_features  # loads torch

    start = time.perf_counter()
    config = (config or BuildConfig()).validate()
    out = Path(out)
    root = Path(source).resolve()
    members, skipped = scan_image_files(root)  # links out of the folder and non-files are skipped, and reported
    created, main = not out.exists(), is_main_process()
    try:
        with writer_lock(out) if main else contextlib.nullcontext():
            previous = _previous_state(out, root, update, model) if main or not created else None
            stamp_of = _stamps(root, members)
            kept_rows, new_members = _diff(previous, members, stamp_of)
            dataset, unreadable = _readable_dataset(root, new_members)
            unreadable = [*skipped, *unreadable]
            if previous is None and dataset is None:
                also = f" ({len(skipped)} skipped: {skipped[0][0]}, {skipped[0][1]})" if skipped else ""
                raise InputError(f"none of the {len(members)} image files in {source} could be read{also}"
                                 if members else f"no image files found in {source}{also}")
            state = previous or _fresh_state(root, model, feature_config, dataset)
            if config.backend is not None:
                state.backend = str(parse_backend(config.backend))
            features = None if dataset is None else extract_features(dataset, state.feature_config, progress=progress,
                                                                         cache="images")
            if not main:
                return None  # another rank of a torchrun launch: its share of the features is extracted
            trained = state.hasher is None
            if trained:
                state.hasher = _train_hasher(dataset, features, state, config, progress)
            summary = BuildSummary(path=str(out), generation=state.generation + 1, n_images=0, added=0, removed=0,
                                   unchanged=len(kept_rows), unreadable=[(str(p), str(r)) for p, r in unreadable],
                                   trained=trained, backend=state.backend,
                                   trained_on=min(len(dataset), config.max_train) if trained else 0)
            if previous is None:
                sample = training_rows(len(features), config.max_train, config.seed)
                state.reducer = FeatureReducer.fit(features[sample])
                state.vectors = np.empty((0, state.reducer.dimensions), np.float16)
            write_generation(out, state, kept_rows, dataset, _encode(dataset, features, state),
                             _vectors(features, state), stamp_of, summary, config.thumbnail_size,
                             new_model=previous is None, started=start)
    except BaseException:
        if created and main:  # leave nothing behind when a first build fails before its manifest exists
            if not (out / MANIFEST_FILE).exists():
                shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


def _previous_state(out: Path, root: Path, update: bool, model: Any) -> State | None:
    if not (out / MANIFEST_FILE).exists():
        foreign = [p.name for p in out.iterdir() if p.name != LOCK_FILE and not is_ours(p.name)]
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
        items = read_json(out / collection.manifest["items"], WHAT)
        manifest = collection.manifest
        return State(
            root=root, generation=collection.generation, next_id=int(manifest["next_id"]), method=manifest["method"],
            n_bits=collection.n_bits, feature_config=collection.feature_config, hasher=collection.hasher,
            model_name=manifest["model"], created=manifest.get("created"), files=manifest["files"],
            ids=collection.ids, codes=collection.codes, paths=list(items["paths"]), stamps=list(items["stamps"]),
            thumbnails=[list(t) for t in items["thumbnails"]], segments=list(items["segments"]),
            backend=collection.backend, reducer=collection.reducer, vectors=collection.vectors,
        )
    finally:
        collection.close()


def _fresh_state(root: Path, model: Any, feature_config: Any, dataset: Dataset) -> State:
    """A new index's state; with a saved `model`, its hasher (and its feature config, unless one is given);
    otherwise features at the input size that suits the images' resolution (FeatureConfig.for_data)."""
    state = State(root=root, generation=0, next_id=0, method=None, n_bits=None, feature_config=feature_config)
    if model is not None:
        pipeline = ImagePipeline.load(model)
        state.hasher = pipeline.hasher
        state.method, state.n_bits = hasher_name(state.hasher), int(state.hasher.n_bits)
        if state.feature_config is None and not pipeline.features_only:
            state.feature_config = pipeline.feature_config
    state.feature_config = state.feature_config or FeatureConfig.for_data(dataset)
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


def _diff(previous: State | None, members: list[str], stamp_of: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """Rows of the previous index to keep (same path, same stamp) and the members to encode anew."""
    members = [m for m in members if m in stamp_of]  # a file deleted while scanning is simply not there
    if previous is None:
        return np.empty(0, np.int64), members
    kept = [row for row, (p, s) in enumerate(zip(previous.paths, previous.stamps)) if stamp_of.get(p) == s]
    kept_paths = {previous.paths[row] for row in kept}
    return np.asarray(kept, dtype=np.int64), [m for m in members if m not in kept_paths]


def _readable_dataset(root: Path, members: list[str]) -> tuple[Any, list[tuple[str, str]]]:
    """A Dataset of the members that decode, and (path, reason) for those that do not."""
    if not members:
        return None, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report lists unreadable files; no need to warn as well
        good, unreadable = validate_members(open_source(root, members), "skip", str(root))
    if not good:
        return None, list(unreadable)
    readable = [members[i] for i in good]
    return Dataset("folder", open_source(root, readable), readable, root=root), list(unreadable)


def _train_hasher(dataset: Any, features: np.ndarray, state: State, config: BuildConfig, progress: bool) -> Hasher:
    """A hasher trained on (a random sample of at most max_train of) the new images' features."""
    picked = training_rows(len(dataset), config.max_train, config.seed)
    train, features = dataset.subset(picked), features[picked]
    state.method, state.n_bits = config.method, config.n_bits
    if config.method == "bgan":
        from bganhash.bgan.estimator import BGANHasher  # loads torch

        params = {**collection_bgan_settings(len(train)), **config.hasher_params}
        hasher = BGANHasher(config.n_bits, random_state=config.seed, feature_config=state.feature_config, **params)
        needs_images = params.get("use_content", True) or params.get("use_adversarial", True)
        return hasher.fit(features, images=train.to_array(size=32) if needs_images else None, progress=progress)
    return create_hasher(config.method, config.n_bits, random_state=config.seed, **config.hasher_params).fit(features)


COLLECTION_TRAINING_STEPS = 1_600  # what the cpu preset's 20 epochs of 10,000 images take
COLLECTION_LR = 3e-3
COLLECTION_MAX_K = 50  # K1 = K2 from 5,000 images on (the cpu preset's)
# Balanced, uncorrelated bits (bganhash.bgan.losses.bit_spread_loss) beside l_N, in proportion to K / 50: from
# a random start, weight 1 (at K = 50) lifted precision@10 from 0.470 to 0.612 at 10,000 images (l_N only,
# 64 bits); from ITQ's codes, 0.5: 49,500 images, 32 bits, seeds 0 / 1, 0.603 / 0.581 against 0.565 / 0.563 at
# 0.25 and 0.583 / 0.569 at 1 (ITQ 0.550 / 0.549; RESULTS.md, issue 12).
COLLECTION_BIT_SPREAD_WEIGHT = 1.0
ITQ_START_BIT_SPREAD_WEIGHT = 0.5
# From this many images on, training starts from ITQ's codes (NetworkConfig.hash_init) with K at least
# ITQ_START_MIN_K: at 2,000 images precision@10 0.552 / 0.559 (32 bits) and 0.566 / 0.571 (64) against
# 0.534 / 0.527 and 0.552 / 0.565 from a random start; at 1,000 images with K = 10, 64 bits, seeds 0 / 1 / 2,
# 0.540 / 0.540 / 0.540 against 0.515 / 0.546 / 0.539 from a random start with K = 5 (ITQ 0.508 / 0.500 /
# 0.496); ITQ's start with K = 5 held the codes at ITQ's level (RESULTS.md, issue 12).
ITQ_START_MIN_IMAGES = 1_000
ITQ_START_MIN_K = 10
# With that start K = n / 100 (up to COLLECTION_MAX_K): at 2,000 images, 64 bits, seeds 0 / 1 / 2, K = 20 gave
# 0.573 / 0.593 / 0.580 against 0.566 / 0.567 / 0.575 with K = 10 (ITQ 0.535 / 0.537 / 0.539; RESULTS.md).
ITQ_START_IMAGES_PER_K = 100


def collection_bgan_settings(n_images: int, batch_size: int = 128, n_stages: int = 4) -> dict[str, Any]:
    """BGAN's settings for a collection of n images, on top of the cpu preset: K1 = K2, a schedule long
    enough to learn from few images, a bit-spread term, and from 1,000 images on a start from ITQ's codes.

    K1 = K2 = 50 gives about 1,000 positives per image; in a collection of a few hundred images that is every
    image, and BGAN learns one code for all (measured: 120 digits, 1 distinct code; with K = 3, 102), so K
    shrinks with n. And the preset's 5 epochs per stage are 1,580 Adam steps at 10,000 images but 160 at
    1,000: too few, the codes stayed half-collapsed (precision@10 0.36 against ITQ's 0.51, 503 distinct codes
    of 1,000). At least COLLECTION_TRAINING_STEPS steps at lr 3e-3 gave 0.538 and 865 (RESULTS.md, issue 12:
    every lever measured on CIFAR-10's training folder). From a few thousand images on, l_N alone puts a
    pseudo-class of hundreds on one code (5,102 distinct codes of 10,000 at 32 bits) and the top of a Hamming
    ranking is a tie in insertion order; a bit-spread term keeps bits balanced and uncorrelated, so a
    pseudo-class spreads over nearby codes; its weight grows with K, as the pull of the positive sets does.
    From 1,000 images on the hash layer starts as ITQ's projection, so l_N refines codes that already rank
    well instead of finding them from random ones (at 49,500 images, 32 bits, 0.580-0.603 over three seeds
    against 0.518-0.556 from a random start; ITQ 0.542-0.550), with K = n / 100, at least 10 (with the n / 200
    of the random start, ITQ's start held 1,000 images' codes at ITQ's level). Below 1,000 images: a random
    start, K = n / 200, at least 3. From K = 50 (5,000 images) on, no generator or discriminator: at 10,000
    images, lr 3e-3, their content term grew from 0.7 to 29 over training and undid the codes in its last
    epochs; at 5,000 the hash head alone scored as well, five times faster.
    """
    itq_start = n_images >= ITQ_START_MIN_IMAGES
    if itq_start:
        k = max(ITQ_START_MIN_K, min(COLLECTION_MAX_K, n_images // ITQ_START_IMAGES_PER_K))
    else:
        k = max(3, n_images // 200)
    generative = k < COLLECTION_MAX_K  # the generator and discriminator below 5,000 images only (docstring)
    steps_per_epoch = max(1, -(-n_images // batch_size))
    epochs = max(5, -(-COLLECTION_TRAINING_STEPS // (n_stages * steps_per_epoch)))
    spread = (ITQ_START_BIT_SPREAD_WEIGHT if itq_start else COLLECTION_BIT_SPREAD_WEIGHT) * k / COLLECTION_MAX_K
    return {"k1": k, "k2": k, "epochs_per_stage": epochs, "lr": COLLECTION_LR, "bit_spread_weight": spread,
            "use_content": generative, "use_adversarial": generative,
            "hash_init": "itq" if itq_start else "random"}


def training_rows(n_images: int, max_train: int, seed: int) -> np.ndarray:
    """The rows a collection's hasher (and its re-ranking reducer) is fitted on: a seeded random sample of at
    most `max_train` of its `n_images`."""
    if n_images <= max_train:
        return np.arange(n_images)
    return np.sort(np.random.default_rng(seed).choice(n_images, max_train, replace=False))


def _vectors(features: np.ndarray | None, state: State) -> np.ndarray | None:
    """The new images' compact features for re-ranking (None when the index keeps none)."""
    if state.reducer is None:
        return None
    if features is None:
        return np.empty((0, state.reducer.dimensions), np.float16)
    return state.reducer.reduce(features)


def _encode(dataset: Any, features: np.ndarray | None, state: State) -> np.ndarray:
    """Packed codes of the new images (from their features, or their pixels for a pixel encoder)."""
    if features is None:
        return np.empty((0, code_bytes(state.n_bits)), np.uint8)
    pipeline = ImagePipeline(state.hasher, state.feature_config)
    codes = pipeline.encode_dataset(dataset) if pipeline.encodes_pixels else pipeline.encode_features(features)
    return pack_codes(codes)
