"""Feature extraction, its on-disk cache, .npy feature files and the pre-K-NN transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bganhash.features.extract as features_module
from bganhash import InputError
from bganhash.features.cache import feature_cache_dir, feature_cache_path, load_features
from bganhash.features.config import FeatureConfig
from bganhash.features.extract import extract_features, features_of_images, resize_pixels
from bganhash.features.transforms import transform_features

SMALL = FeatureConfig(image_size=48, batch_size=4, precision="fp32")  # compared with the eager reference


class TinyDataset:
    """Duck-typed stand-in for bganhash.datasets.Dataset: random images, some of another size."""

    def __init__(self, n: int = 10, seed: int = 0, odd_sizes: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
        if odd_sizes and n > 3:
            self.images[3] = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
        self.name = "tiny"
        self.labels = np.arange(n) % 2
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def iter_batches(self, batch_size: int, indices=None):
        order = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, [self.images[i] for i in chunk]

    def fingerprint(self) -> str:
        return f"tiny{self.seed}n{len(self)}"


def torch_reference(image: np.ndarray, size: int, backbone) -> np.ndarray:
    """Features as the eager PyTorch path computed them before the runtime: torch resize, NCHW, eager."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    shrinking = max(image.shape[:2]) > size
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=shrinking)
    mean = torch.tensor(backbone.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.input_std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return backbone.forward_features((x - mean) / std)[0].numpy()


def test_rows_equal_one_image_at_a_time(lite0):
    dataset = TinyDataset()
    features = extract_features(dataset, SMALL, cache=False, progress=False)
    assert features.dtype == np.float32 and features.shape == (len(dataset), 1280)
    for i in (0, 3, 9):
        np.testing.assert_allclose(features[i], torch_reference(dataset.read_image(i), 48, lite0), rtol=1e-3, atol=1e-4)


def test_second_run_reads_the_cache_without_the_backbone(monkeypatch):
    dataset = TinyDataset()
    first = extract_features(dataset, SMALL, progress=False)
    path = feature_cache_path(dataset, SMALL)
    assert path.parent == feature_cache_dir() and path.name.startswith("tiny0n10-efficientnet_lite0-48-")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["shape"] == [10, 1280] and sidecar["config"]["image_size"] == 48

    def no_extraction(*args, **kwargs):
        raise AssertionError("the backbone ran although the cache holds the features")

    monkeypatch.setattr(features_module, "compute_features", no_extraction)
    np.testing.assert_array_equal(extract_features(dataset, SMALL, progress=False), first)


@pytest.mark.parametrize("damage", ["garbage", "wrong_rows", "nan"])
def test_damaged_cache_is_recomputed(damage):
    dataset = TinyDataset(n=5, odd_sizes=False)
    good = extract_features(dataset, SMALL, progress=False)
    path = feature_cache_path(dataset, SMALL)
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "wrong_rows":
        np.save(path, good[:3])
    else:
        np.save(path, np.full_like(good, np.nan))
    np.testing.assert_allclose(extract_features(dataset, SMALL, progress=False), good, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(path), good, rtol=1e-5, atol=1e-6)  # and the cache is repaired


def test_cache_key_follows_data_backbone_size_and_preprocessing():
    dataset = TinyDataset()
    paths = {
        feature_cache_path(dataset, SMALL),
        feature_cache_path(TinyDataset(seed=1), SMALL),
        feature_cache_path(dataset, FeatureConfig(image_size=64)),
        feature_cache_path(dataset, FeatureConfig(image_size=48, resize="bicubic")),
        feature_cache_path(dataset, FeatureConfig(backbone="efficientnet_lite2", image_size=48)),
    }
    assert len(paths) == 5
    same = FeatureConfig(image_size=48, batch_size=7, precision="fp32")
    assert feature_cache_path(dataset, same) == feature_cache_path(dataset, SMALL)
    bf16 = FeatureConfig(image_size=48, batch_size=4, precision="bf16")
    assert feature_cache_path(dataset, bf16) != feature_cache_path(dataset, SMALL)


def test_no_cache_writes_nothing():
    extract_features(TinyDataset(n=3), SMALL, cache=False, progress=False)
    assert not feature_cache_dir().exists() or not any(feature_cache_dir().iterdir())


def test_cache_dir_from_environment_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path / "c"))
    assert feature_cache_dir() == tmp_path / "c" / "features"
    monkeypatch.delenv("BGANHASH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert feature_cache_dir() == tmp_path / ".cache" / "bganhash" / "features"


def test_resize_pixels_keeps_range_and_shape_without_cropping():
    white = np.full((32, 32, 3), 255, np.uint8)
    black = np.zeros((20, 50, 3), np.uint8)
    assert resize_pixels(white, 40).shape == (40, 40, 3)
    np.testing.assert_allclose(resize_pixels(white, 40), 255.0, atol=1e-3)
    np.testing.assert_allclose(resize_pixels(black, 40), 0.0, atol=1e-3)


def test_resize_pixels_keeps_pixels_when_size_already_matches(rng):
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_pixels(image, 16), image.astype(np.float32))


@pytest.mark.parametrize("shape", [(30, 30, 3), (300, 200, 3), (17, 90, 3)])
def test_resize_pixels_equals_torch_antialiased_bilinear(rng, shape):
    """The float Pillow resize is the torch interpolate the features were defined with (up and down)."""
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    expected = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False,
                                               antialias=max(shape[:2]) > 64)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_pixels(image, 64), expected, atol=2e-3)


@pytest.mark.parametrize("image", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                   np.zeros((8, 8, 4), np.uint8)])
def test_features_of_images_rejects_non_rgb_uint8(image):
    with pytest.raises(InputError, match=r"uint8 arrays of shape \(H, W, 3\)"):
        features_of_images([image], SMALL)


@pytest.mark.parametrize("config, message", [
    (FeatureConfig(backbone="vgg"), "backbone='vgg' is unknown"),
    (FeatureConfig(image_size=16), "image_size=16 must be >= 32"),
    (FeatureConfig(batch_size=0), "batch_size=0 must be >= 1"),
    (FeatureConfig(resize="lanczos"), "resize='lanczos' must be one of"),
])
def test_bad_config_is_rejected(config, message):
    with pytest.raises(InputError, match=message):
        extract_features(TinyDataset(n=2), config, cache=False, progress=False)


def test_load_features_round_trip(tmp_path, rng):
    X = rng.standard_normal((6, 5))
    np.save(tmp_path / "f.npy", X)
    loaded = load_features(tmp_path / "f.npy", n_expected=6)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, X, rtol=1e-6)


@pytest.mark.parametrize("name, array, n_expected, message", [
    ("f.txt", np.zeros((2, 2)), None, "must be a .npy file"),
    ("missing.npy", None, None, "does not exist"),
    ("objects.npy", np.array([[{"a": 1}, None]], dtype=object), None, "holds dtype object"),
    ("flat.npy", np.zeros(5), None, "features are 2-D"),
    ("nan.npy", np.array([[0.0, np.nan]]), None, "NaN or infinite"),
    ("rows.npy", np.zeros((4, 3)), 5, "has 4 rows, but the dataset has 5 images"),
])
def test_load_features_errors_name_the_file(tmp_path, name, array, n_expected, message):
    path = tmp_path / name
    if array is not None:
        with open(path, "wb") as handle:
            np.save(handle, array, allow_pickle=True)
    with pytest.raises(InputError, match=message) as error:
        load_features(path, n_expected=n_expected)
    assert name in str(error.value)


def test_transform_l2_gives_unit_rows(rng):
    X = rng.standard_normal((7, 4))
    X[2] = 0.0
    Y = transform_features(X, "l2")
    norms = np.linalg.norm(Y, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, rtol=1e-6)
    assert norms[2] == 0.0


def test_transform_sqrt_l2_center_against_a_loop(rng):
    X = rng.standard_normal((5, 3)).astype(np.float32)
    rows = []
    for row in X:
        root = np.array([np.sqrt(v) if v >= 0 else -np.sqrt(-v) for v in row])
        rows.append(root / np.linalg.norm(root))
    expected = np.array(rows) - np.mean(rows, axis=0)
    np.testing.assert_allclose(transform_features(X, "sqrt_l2_center"), expected, rtol=1e-5, atol=1e-6)


def test_transform_none_returns_the_features_and_unknown_is_rejected(rng):
    X = rng.standard_normal((3, 2))
    np.testing.assert_allclose(transform_features(X), X.astype(np.float32))
    with pytest.raises(InputError, match="method='pca' must be one of none, l2, sqrt_l2_center"):
        transform_features(X, "pca")


@pytest.mark.slow
def test_extracts_from_the_real_cifar10_reader(cifar10_zip):
    from bganhash.datasets import load_dataset

    dataset = load_dataset("cifar10", cifar10_zip).subset(np.arange(6))
    features = extract_features(dataset, SMALL, progress=False)
    assert features.shape == (6, 1280) and np.isfinite(features).all()
    assert feature_cache_path(dataset, SMALL).is_file()
