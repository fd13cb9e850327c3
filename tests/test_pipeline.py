"""The image-to-code pipeline: one preprocessing path for every caller, saved and loaded as one unit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bganhash._validation import InputError
from bganhash.datasets.base import ArraySource, Dataset
from bganhash.features.config import FeatureConfig
from bganhash.hashers import ITQ
from bganhash.pipeline import PIPELINE_FILE, ImagePipeline

CONFIG = FeatureConfig(image_size=32, batch_size=3)


def images(n: int = 7, seed: int = 0, side: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side + i % 3, side, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def pipeline() -> ImagePipeline:
    """ITQ fitted on the backbone features of random images."""
    fitting = ImagePipeline(ITQ(8, random_state=0), CONFIG)
    features = fitting.features_of_images(images(40, seed=1))
    return ImagePipeline(ITQ(8, random_state=0).fit(features), CONFIG)


def test_images_paths_and_datasets_encode_alike(pipeline, tmp_path):
    pictures = images()
    from_images = pipeline.encode_images(pictures)
    assert from_images.shape == (7, 8) and from_images.dtype == np.int8
    np.testing.assert_array_equal(from_images, pipeline.encode_features(pipeline.features_of_images(pictures)))
    paths = []
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    np.testing.assert_array_equal(pipeline.encode_paths(paths), from_images)
    same_size = np.stack([p[:24, :24] for p in pictures])
    dataset = Dataset("arrays", ArraySource(same_size), [str(i) for i in range(len(same_size))])
    np.testing.assert_array_equal(pipeline.encode_dataset(dataset), pipeline.encode_images(list(same_size)))


def test_batches_do_not_change_features(pipeline):
    pictures = images(5)
    together = pipeline.features_of_images(pictures)
    one_by_one = np.concatenate([pipeline.features_of_images([p]) for p in pictures])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_save_and_load_keep_the_feature_configuration(pipeline, tmp_path):
    pipeline.save(tmp_path / "model")
    document = json.loads((tmp_path / "model" / PIPELINE_FILE).read_text())
    assert document["feature_config"]["image_size"] == 32
    loaded = ImagePipeline.load(tmp_path / "model")
    assert loaded.feature_config == CONFIG and not loaded.features_only
    np.testing.assert_array_equal(loaded.encode_images(images()), pipeline.encode_images(images()))
    with pytest.raises(InputError, match="was expected"):
        ImagePipeline.load(tmp_path / "model", expected="lsh")


def test_a_bare_hasher_directory_encodes_features_only(pipeline, tmp_path):
    pipeline.hasher.save(tmp_path / "bare")
    loaded = ImagePipeline.load(tmp_path / "bare")
    assert loaded.features_only
    features = pipeline.features_of_images(images())
    np.testing.assert_array_equal(loaded.encode_features(features), pipeline.encode_features(features))
    with pytest.raises(InputError, match="give a .npy file of features"):
        loaded.encode_images(images())


def test_bad_inputs_are_named(pipeline, tmp_path):
    with pytest.raises(InputError, match="no images"):
        pipeline.encode_images([])
    with pytest.raises(InputError, match="uint8 arrays of shape"):
        pipeline.encode_images([np.zeros((8, 8), np.uint8)])
    with pytest.raises(InputError, match="no image file at"):
        pipeline.encode_paths([tmp_path / "missing.jpg"])
    (tmp_path / "model").mkdir()
    pipeline.save(tmp_path / "model")
    (tmp_path / "model" / PIPELINE_FILE).write_text('{"format": "bganhash-pipeline", "format_version": 1, '
                                                   '"feature_config": {"image_size": "big"}}')
    pipeline.hasher.save(tmp_path / "model", covering=[PIPELINE_FILE])  # checksummed as it is now
    with pytest.raises(InputError, match="unusable feature_config"):
        ImagePipeline.load(tmp_path / "model")
