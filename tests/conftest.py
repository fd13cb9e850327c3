"""Shared test fixtures and helpers: the optional ../shared data, seeded RNGs, temporary caches, small image
folders and encoded images, the Lite0 backbone. Test modules import the helpers with `from conftest import ...`."""

from __future__ import annotations

import os

# Oversubscribed BLAS threads make tiny linear algebra very slow on a busy 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import io  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

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


@pytest.fixture(scope="session")
def _runtime_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bganhash-runtimes")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _runtime_cache):
    """Keep feature caches written by tests out of the user's home cache; exported backbones (derived
    from the weights alone) are shared by the whole session."""
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path_factory.mktemp("bganhash-cache")))
    monkeypatch.setenv("BGANHASH_RUNTIME_CACHE", str(_runtime_cache))


@pytest.fixture
def torch_one_thread():
    """Tiny networks train fastest on one thread, and the test machine is shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lite0():
    """The pretrained EfficientNet-Lite0 backbone, loaded once per test module."""
    from bganhash.features.backbones import create_backbone

    return create_backbone("efficientnet_lite0")


@pytest.fixture
def photos(request, tmp_path) -> Path:
    """A fresh photo folder, tmp_path/photos, as the test module's own `make_photos(folder)` writes it."""
    make_photos = getattr(request.module, "make_photos", None)
    if make_photos is None:
        pytest.fail(f"{request.module.__name__} uses the `photos` fixture but defines no make_photos(folder)")
    return make_photos(tmp_path / "photos")


def write_digits(folder: Path, indices, size: int = 32, by_parity: bool = False, fmt: str = "png") -> list[Path]:
    """scikit-learn's 8x8 digits upscaled to size x size RGB files named by digit index (0007.png), in
    sub-folders "even" and "odd" with `by_parity`."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    written = []
    for i in indices:
        gray = np.rint(digits[i] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(gray).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
        path = folder / (("even" if i % 2 == 0 else "odd") if by_parity else "") / f"{i:04d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        written.append(path)
    return written


def image_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    """An image (a uint8 array or a PIL image) encoded as a file in memory."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt)
    return buffer.getvalue()
