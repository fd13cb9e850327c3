"""The Dataset interface, load_dataset, digits and RGB conversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bganhash import InputError
from bganhash.datasets import DATASETS, Dataset, convert_to_rgb, load_dataset
from bganhash.datasets.base import ArraySource


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_registry_names():
    assert DATASETS == ("digits", "cifar10", "folder", "nuswide", "mirflickr")


def test_digits_shapes_labels_and_scaling(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = digits.to_array()
    assert len(digits) == 1797 and images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8
    assert digits.labels.dtype == np.int64 and np.array_equal(digits.labels, raw.target)
    assert np.bincount(digits.labels).tolist() == np.bincount(raw.target).tolist()
    assert digits.class_names == [str(i) for i in range(10)] and not digits.multilabel
    assert np.array_equal(images[..., 0], images[..., 2])
    assert np.array_equal(images[..., 1], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert images.max() == 255 and digits.locations[17] == "digits/17" and digits.root is None


def test_read_image_and_batches_agree_with_to_array(digits):
    images = digits.to_array()
    assert np.array_equal(digits.read_image(5), images[5])
    order = np.array([9, 3, 1000, 4, 7])
    seen = [(ids.tolist(), [im.shape for im in batch]) for ids, batch in digits.iter_batches(2, order)]
    assert seen == [([9, 3], [(8, 8, 3)] * 2), ([1000, 4], [(8, 8, 3)] * 2), ([7], [(8, 8, 3)])]
    for ids, batch in digits.iter_batches(2, order):
        assert all(np.array_equal(im, images[i]) for i, im in zip(ids, batch))


def test_to_array_resizes(digits):
    resized = digits.to_array([0, 1], size=32)
    assert resized.shape == (2, 32, 32, 3) and resized.dtype == np.uint8
    # a constant image stays constant under bilinear resizing
    flat = Dataset("toy", ArraySource(np.full((1, 5, 7, 3), 77, np.uint8)), ["toy/0"])
    assert np.all(flat.to_array(size=9) == 77) and flat.to_array(size=9).shape == (1, 9, 9, 3)


def test_subset_keeps_pixels_labels_locations(digits):
    part = digits.subset([10, 2, 30])
    assert len(part) == 3 and part.locations == ["digits/10", "digits/2", "digits/30"]
    assert np.array_equal(part.labels, digits.labels[[10, 2, 30]])
    assert np.array_equal(part.to_array(), digits.to_array([10, 2, 30]))
    nested = part.subset([2])
    assert np.array_equal(nested.read_image(0), digits.read_image(30))
    mask = np.zeros(len(digits), bool)
    mask[[4, 8]] = True
    assert digits.subset(mask).locations == ["digits/4", "digits/8"]


def test_fingerprint_tracks_content_and_order(digits):
    assert digits.fingerprint() == load_dataset("digits").fingerprint()
    assert len(digits.fingerprint()) == 64
    assert digits.subset([0, 1]).fingerprint() != digits.subset([1, 0]).fingerprint()
    assert digits.subset([0, 1]).fingerprint() == digits.subset([0, 1]).fingerprint()


@pytest.mark.parametrize("bad", [-1, 1797, 2.0, True])
def test_read_image_rejects_bad_index(digits, bad):
    with pytest.raises(InputError, match="index"):
        digits.read_image(bad)


@pytest.mark.parametrize("indices", [[0, 5000], [[0, 1]], [0.5]])
def test_bad_indices_are_rejected(digits, indices):
    with pytest.raises(InputError):
        digits.to_array(indices)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_dataset("imagenet"), "unknown dataset"),
        (lambda: load_dataset("digits", "somewhere"), "takes no data"),
        (lambda: load_dataset("digits", colour=True), "unknown option"),
        (lambda: load_dataset("folder"), r"needs its data: pass data=PATH \(CLI: --data PATH\)"),
        (lambda: load_dataset("folder", "x", download=True), r"only CIFAR-10 can be downloaded .*CLI: --download"),
        (lambda: load_dataset("digits", on_error="ignore"), "on_error"),
    ],
)
def test_load_dataset_errors(call, message):
    with pytest.raises(InputError, match=message):
        call()


def _gradient(mode_size=(6, 4)):
    w, h = mode_size
    return np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3) * 3


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (6, 4), 200), (200, 200, 200)),
        (Image.new("1", (6, 4), 1), (255, 255, 255)),
        (Image.new("LA", (6, 4), (10, 0)), (255, 255, 255)),  # fully transparent -> white
        (Image.new("LA", (6, 4), (10, 255)), (10, 10, 10)),
        (Image.new("RGBA", (6, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("RGBA", (6, 4), (0, 0, 0, 128)), (127, 127, 127)),
        (Image.new("RGB", (6, 4), (1, 2, 3)).convert("P", palette=Image.Palette.ADAPTIVE), (1, 2, 3)),
        (Image.new("CMYK", (6, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (6, 4), (255, 0, 0, 0)), (0, 255, 255)),
        (Image.new("I;16", (6, 4), 65535), (255, 255, 255)),
        (Image.new("I;16", (6, 4), 257 * 40), (40, 40, 40)),
        (Image.new("I", (6, 4), 30000), (117, 117, 117)),
        (Image.new("F", (6, 4), 0.5), (128, 128, 128)),
    ],
    ids=lambda v: getattr(v, "mode", ""),
)
def test_convert_to_rgb_modes(image, expected):
    rgb = np.asarray(convert_to_rgb(image))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - expected).max() <= 1


def test_convert_to_rgb_palette_with_transparency_is_white():
    image = Image.new("P", (3, 3), 0)
    image.putpalette([9, 9, 9] * 256)
    image.info["transparency"] = 0
    assert np.all(np.asarray(convert_to_rgb(image)) == 255)


def test_convert_to_rgb_keeps_rgb_pixels():
    pixels = _gradient()
    assert np.array_equal(np.asarray(convert_to_rgb(Image.fromarray(pixels))), pixels)
