"""Issue 15: every loader of a saved file, fed random byte flips and truncations of what bganhash wrote, either
refuses with an InputError or loads exactly what was saved (a change that means nothing, such as JSON
whitespace); never another exception. Features files (.npy, the user's own) have no checksum: a flip in their
data gives other numbers, so there a load must give a finite float32 array of the saved shape."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bganhash._validation import InputError
from bganhash.collection import Collection
from bganhash.features.cache import load_features
from bganhash.hashers import ITQ
from bganhash.index import Index
from bganhash.pipeline import ImagePipeline
from test_hardening_files import FEATURES, build_small, fake_features

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def mutations() -> st.SearchStrategy:
    """(which file, what to do, where, with what): a byte changed, a bit flipped, or the file cut short."""
    return st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "byte", "truncate"]), st.floats(0, 1),
                     st.integers(1, 255))


def mutate(directory: Path, mutation) -> str:
    """Apply `mutation` to one file under `directory` (chosen among all of them); returns its name."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    which, how, where, value = mutation
    path = files[which % len(files)]
    data = bytearray(path.read_bytes())
    if not data:
        return path.name
    at = min(int(where * len(data)), len(data) - 1)
    if how == "flip":
        data[at] ^= 1 << (value % 8)
    elif how == "byte":
        data[at] = (data[at] + value) % 256  # never the same byte
    else:
        del data[at:]
    path.write_bytes(bytes(data))
    return path.relative_to(directory).as_posix()


def check_loader(pristine: Path, mutation, load: Callable[[Path], object], same: Callable[[object], bool]) -> None:
    """Copy `pristine`, damage the copy, load it: InputError, or exactly the pristine content."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / pristine.name
        shutil.copytree(pristine, copy) if pristine.is_dir() else shutil.copy(pristine, copy)
        damaged = mutate(copy if copy.is_dir() else Path(scratch), mutation)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = load(copy)
        except InputError:
            return
        assert same(loaded), f"{damaged} damaged by {mutation} loaded different content without an error"


# ---- what is fuzzed: one of each saved file kind, written once ------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12)).astype(np.float32)
    ImagePipeline(ITQ(8, random_state=0).fit(X), FEATURES).save(base / "model")
    np.save(base / "X.npy", X)
    index = Index(16, "flat")
    index.add(np.where(rng.random((30, 16)) < 0.5, -1, 1), ids=rng.permutation(100)[:30])
    (base / "index").mkdir()
    index.save(base / "index" / "codes.bgidx")
    from conftest import write_digits

    write_digits(base / "photos", range(10))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bganhash.features.extract.extract_features", fake_features)
        build_small(base / "photos", base / "photos.index")
    return {"base": base, "X": X}


@FUZZ
@given(mutation=mutations())
def test_model_directory(saved, mutation):
    X = saved["X"]
    expected = ImagePipeline.load(saved["base"] / "model").encode_features(X)

    def same(pipeline):
        return pipeline.feature_config == FEATURES and np.array_equal(pipeline.encode_features(X), expected)

    check_loader(saved["base"] / "model", mutation, ImagePipeline.load, same)


@FUZZ
@given(mutation=mutations())
def test_index_file(saved, mutation):
    original = Index.load(saved["base"] / "index" / "codes.bgidx")

    def same(index):
        return (index.backend == original.backend and np.array_equal(index.codes, original.codes)
                and np.array_equal(index.ids, original.ids))

    check_loader(saved["base"] / "index", mutation, lambda d: Index.load(d / "codes.bgidx"), same)


@FUZZ
@given(mutation=mutations())
def test_collection(saved, mutation):
    with Collection.load(saved["base"] / "photos.index") as original:
        expected = (original.ids.copy(), original.codes.copy(), list(original.paths), original.feature_config,
                    [original.thumbnail(int(i)) for i in original.ids], original.vectors.copy())

    def load(directory):
        with Collection.load(directory) as collection:
            return (collection.ids.copy(), collection.codes.copy(), list(collection.paths), collection.feature_config,
                    [collection.thumbnail(int(i)) for i in collection.ids], collection.vectors.copy())

    def same(loaded):
        return (np.array_equal(loaded[0], expected[0]) and np.array_equal(loaded[1], expected[1])
                and loaded[2:5] == expected[2:5] and np.array_equal(loaded[5], expected[5]))

    check_loader(saved["base"] / "photos.index", mutation, load, same)


@FUZZ
@given(mutation=mutations())
def test_features_file(saved, mutation):
    def same(features):
        return features.dtype == np.float32 and features.shape == saved["X"].shape and np.isfinite(features).all()

    check_loader(saved["base"] / "X.npy", mutation, load_features, same)


# ---- the training checkpoint -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    from test_checkpoint_atomic import trainer

    directory = tmp_path_factory.mktemp("checkpoint") / "checkpoints"
    run = trainer(directory)
    run.fit()
    return directory, {key: value.clone() for key, value in run.networks.state_dict().items()}


@settings(FUZZ, max_examples=40)
@given(mutation=mutations())
def test_checkpoint(saved_checkpoint, mutation, torch_one_thread):
    import torch

    from bganhash.bgan.checkpoint import load_checkpoint
    from test_checkpoint_atomic import CONFIG, trainer

    directory, weights = saved_checkpoint

    def load(copy):
        fresh = trainer(seed=7)
        history, next_stage = load_checkpoint(copy, fresh.networks, fresh.optimizers, CONFIG)
        return fresh.networks.state_dict(), len(history), next_stage

    def same(loaded):
        state, n_history, next_stage = loaded
        return (n_history, next_stage) == (3, 3) and all(torch.equal(state[k], v) for k, v in weights.items())

    check_loader(directory, mutation, load, same)
