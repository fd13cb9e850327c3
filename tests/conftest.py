"""Shared test fixtures: the optional ../shared data, seeded RNGs, temporary caches."""

from __future__ import annotations

import os

# Oversubscribed BLAS threads make tiny linear algebra very slow on a busy 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CIFAR10_ZIP = SHARED_DATA / "cifar10-jpg.zip"


@pytest.fixture
def cifar10_zip() -> Path:
    """Path of the CIFAR-10 JPEG zip in ../shared/data; the test is skipped when it is absent."""
    if not CIFAR10_ZIP.is_file():
        pytest.skip(f"needs {CIFAR10_ZIP} (the project's shared data), which is absent on this machine")
    return CIFAR10_ZIP


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep feature caches written by tests out of the user's home cache."""
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path_factory.mktemp("bganhash-cache")))


@pytest.fixture
def torch_one_thread():
    """Tiny networks train fastest on one thread, and the test machine is shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
