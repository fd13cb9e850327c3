"""BGANHasher: the estimator interface, inputs of every kind, save/load, configs and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bganhash import InputError, NotFittedError
from bganhash.bgan.config import BGANConfig, LossConfig, NetworkConfig, make_config
from bganhash.bgan.estimator import (
    BGANHasher,
    default_reconstruction_size,
    feature_codes,
    fit_input_transform,
    initialise_from_itq,
)
from bganhash.hashers import ITQ
from bganhash.hashers.base import Hasher
from bganhash.pipeline import ImagePipeline

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = dict(batch_size=8, epochs_per_stage=1, beta_schedule=(1.0, 3.0), head_hidden=(16,), width_factor=1 / 16,
            discriminator_dense=64, k1=3, k2=3)


def _data(n=24, d=12, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    X = (rng.standard_normal((3, d))[labels] * 2 + rng.standard_normal((n, d))).astype(np.float32)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return X, images, labels


def test_fit_encode_gives_signed_int8_codes():
    X, images, _ = _data()
    hasher = BGANHasher(12, preset="cpu", random_state=0, **TINY)
    assert hasher.fit(X, images=images, progress=False) is hasher
    codes = hasher.encode(X)
    assert codes.dtype == np.int8 and codes.shape == (24, 12) and set(np.unique(codes)) <= {-1, 1}
    assert hasher.n_features_in_ == 12 and hasher.reconstruction_size_ == 8
    assert len(hasher.history_) == 2 and hasher.config_["n_bits"] == 12


def test_random_state_and_overrides_reach_the_config():
    hasher = BGANHasher(16, preset="cpu", random_state=7, lr=0.01, use_adversarial=False)
    config = hasher.resolved_config()
    assert (config.n_bits, config.train.seed, config.train.lr, config.loss.use_adversarial) == (16, 7, 0.01, False)
    with pytest.raises(InputError, match="unknown BGAN setting 'learning_rate'"):
        BGANHasher(16, learning_rate=0.1).resolved_config()


def test_knn_method_and_nprobe_reach_the_neighborhood(monkeypatch):
    from bganhash.bgan import estimator as neighborhood  # where BGANHasher looks the function up

    seen = {}
    original = neighborhood.neighborhood_structure

    def spy(features, k1, k2, **options):
        seen.update(options)
        return original(features, k1, k2, **{**options, "knn_method": "exact"})

    monkeypatch.setattr(neighborhood, "neighborhood_structure", spy)
    X, _, _ = _data()
    BGANHasher(8, preset="cpu", use_content=False, use_adversarial=False, knn_method="ivf", nprobe=4,
               **TINY).fit(X, progress=False)
    assert seen == {"knn_method": "ivf", "nprobe": 4, "progress": False}
    with pytest.raises(InputError, match="knn_method"):
        BGANHasher(8, knn_method="annoy").resolved_config()
    with pytest.raises(InputError, match="nprobe"):
        BGANHasher(8, nprobe=0).resolved_config()


def test_same_seed_same_codes():
    X, images, _ = _data()
    codes = [BGANHasher(8, preset="cpu", random_state=1, **TINY).fit(X, images=images, progress=False).encode(X)
             for _ in range(2)]
    assert np.array_equal(codes[0], codes[1])


def test_adversarial_term_alone_does_not_reach_the_codes_under_eq18():
    """The reproduction trains Table 2's N+A (Eq. 18) as N's cell (research.plan.codes_equivalent): the
    generator and discriminator then train beside an encoder that descends l_N only, so the codes agree."""
    X, images, _ = _data()
    common = dict(preset="cpu", random_state=1, use_content=False, **TINY)
    neighbourhood = BGANHasher(8, use_adversarial=False, **common).fit(X, progress=False)
    adversarial = BGANHasher(8, use_adversarial=True, **common).fit(X, images=images, progress=False)
    reaching = BGANHasher(8, use_adversarial=True, adversarial_reaches_encoder=True, **common)
    reaching.fit(X, images=images, progress=False)
    assert adversarial.networks_.generator is not None
    assert np.array_equal(neighbourhood.encode(X), adversarial.encode(X))
    assert np.array_equal(neighbourhood._project(X), adversarial._project(X))  # not only the signs: z itself
    assert not np.allclose(neighbourhood._project(X), reaching._project(X))


@pytest.mark.parametrize("head_hidden", [(), (16,)])
def test_itq_initialised_hash_layer_starts_from_itq_codes(head_hidden, tmp_path):
    X, images, _ = _data(n=60)
    settings = {**TINY, "head_hidden": head_hidden, "hash_init": "itq", "use_content": False, "use_adversarial": False}
    hasher = BGANHasher(8, preset="cpu", random_state=3, **settings)
    config = hasher.resolved_config()
    inputs, _ = fit_input_transform(X, config.neighborhood.feature_transform)
    networks = hasher._build_networks(config, X.shape[1], 8, pretrained=False)
    initialise_from_itq(networks, inputs, 8, seed=3)
    itq_codes = ITQ(8, random_state=3).fit(inputs).encode(inputs)
    assert np.array_equal(feature_codes(networks, inputs), itq_codes)
    trained = hasher.fit(X, progress=False)  # 16 small steps: the fit starts from ITQ's codes and keeps them
    assert np.array_equal(trained.encode(X), itq_codes)
    weights = trained.networks_.hash_layer.linear.weight
    assert weights.shape[1] == sum(head_hidden) + X.shape[1]
    if head_hidden:  # the hidden path, started at 0, learns
        assert float(weights[:, : sum(head_hidden)].ne(0).float().mean()) > 0.5
    trained.save(tmp_path / "model")
    assert np.array_equal(Hasher.load(tmp_path / "model").encode(X), trained.encode(X))


def test_save_load_identity_without_pickles(tmp_path):
    X, images, _ = _data()
    hasher = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(X, images=images, progress=False)
    hasher.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["hasher.json", "hasher.safetensors"]
    loaded = Hasher.load(tmp_path / "model")
    assert isinstance(loaded, BGANHasher)
    assert np.array_equal(loaded.encode(X), hasher.encode(X))
    assert loaded.config_ == hasher.config_ and loaded.history_ == hasher.history_
    document = json.loads((tmp_path / "model" / "hasher.json").read_text())
    assert document["class"] == "BGANHasher" and "networks_.hash_layer.linear.weight" in document["arrays"]
    assert BGANHasher.load(tmp_path / "model").get_params() == hasher.get_params()


def test_a_model_saved_under_the_former_names_loads(tmp_path):
    """Models saved before the renames hold `input_centre_`, `image_size_` and network.image_size /
    max_image_size (and an `image_size` override among the parameters): they load as before."""
    import safetensors.numpy

    X, images, _ = _data(size=16)
    hasher = BGANHasher(8, preset="cpu", random_state=0, reconstruction_size=16, **TINY)
    hasher.fit(X, images=images, progress=False)
    assert hasher.input_center_ is not None  # the default feature transform centers
    hasher.save(tmp_path / "model")
    arrays_file, metadata_file = tmp_path / "model" / "hasher.safetensors", tmp_path / "model" / "hasher.json"
    arrays = safetensors.numpy.load(arrays_file.read_bytes())
    arrays["input_centre_"] = arrays.pop("input_center_")
    arrays_file.write_bytes(safetensors.numpy.save(arrays))
    document = json.loads(metadata_file.read_text())
    document["arrays"] = sorted(arrays)
    attributes, params = document["attributes"], document["params"]
    attributes["image_size_"] = attributes.pop("reconstruction_size_")
    network = attributes["config_"]["network"]
    network["image_size"], network["max_image_size"] = network.pop("reconstruction_size"), \
        network.pop("max_reconstruction_size")
    params["image_size"] = params.pop("reconstruction_size")
    del document["files"], document["sha256"]  # as format version 1, before checksums, wrote it
    metadata_file.write_text(json.dumps({**document, "format_version": 1}))

    loaded = BGANHasher.load(tmp_path / "model")
    assert np.array_equal(loaded.input_center_, hasher.input_center_)
    assert loaded.reconstruction_size_ == 16 and loaded.config_ == hasher.config_
    assert np.array_equal(loaded.encode(X), hasher.encode(X))
    assert loaded.resolved_config() == hasher.resolved_config()
    loaded.save(tmp_path / "again")  # and it saves under the current names
    again = json.loads((tmp_path / "again" / "hasher.json").read_text())
    assert "input_center_" in again["arrays"] and "reconstruction_size_" in again["attributes"]


def test_former_config_names_are_aliases():
    assert make_config("cpu", image_size=32, max_image_size=32).network == \
        make_config("cpu", reconstruction_size=32, max_reconstruction_size=32).network
    assert BGANHasher(8, preset="cpu", image_size=16).resolved_config().network.reconstruction_size == 16
    old = make_config("cpu").to_dict()
    old["network"]["image_size"] = old["network"].pop("reconstruction_size")
    old["network"]["max_image_size"] = old["network"].pop("max_reconstruction_size")
    assert BGANConfig.from_dict(old) == make_config("cpu")
    with pytest.raises(InputError, match="both 'image_size' .* and 'reconstruction_size'"):
        make_config("cpu", image_size=16, reconstruction_size=32)
    with pytest.raises(InputError, match="both 'image_size' .* and 'reconstruction_size'"):
        NetworkConfig.from_dict({"image_size": 16, "reconstruction_size": 16})
    assert make_config("cpu", network={"image_size": 32}).network.reconstruction_size == 32


def test_neighborhood_only_training_needs_no_images():
    X, _, labels = _data()
    hasher = BGANHasher(8, preset="cpu", random_state=0, use_content=False, use_adversarial=False, **TINY)
    hasher.fit(X, progress=False)
    assert hasher.networks_.generator is None and hasher.reconstruction_size_ is None


def test_missing_images_is_an_input_error():
    X, _, _ = _data()
    with pytest.raises(InputError, match="images=None"):
        BGANHasher(8, preset="cpu", **TINY).fit(X, progress=False)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((24, 8, 8), np.uint8), "uint8"),
        (np.zeros((24, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((23, 8, 8, 3), np.uint8), "23 images"),
        (np.zeros((24, 4, 4, 3), np.uint8), "too small"),
    ],
)
def test_bad_training_images(images, match):
    X, _, _ = _data()
    with pytest.raises(InputError, match=match):
        BGANHasher(8, preset="cpu", **TINY).fit(X, images=images, progress=False)


def test_precomputed_and_supervised_neighborhoods():
    X, images, labels = _data()
    same = labels[:, None] == labels[None, :]
    a = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(X, images=images, neighborhood=same, progress=False)
    b = BGANHasher(8, preset="cpu", random_state=0, supervised=True, **TINY).fit(
        X, images=images, labels=labels, progress=False)
    assert np.array_equal(a.encode(X), b.encode(X))
    with pytest.raises(InputError, match="labels"):
        BGANHasher(8, preset="cpu", supervised=True, **TINY).fit(X, images=images, progress=False)
    with pytest.raises(InputError, match=r"\(24, 24\)"):
        BGANHasher(8, preset="cpu", **TINY).fit(X, images=images, neighborhood=same[:5, :5], progress=False)


def test_validation_map_is_logged():
    X, images, labels = _data()
    hasher = BGANHasher(8, preset="cpu", random_state=0, **TINY)
    hasher.fit(X, images=images, validation=(X[:6], labels[:6], X, labels), progress=False)
    assert all(0 < record["val_map"] <= 1 for record in hasher.history_)


def test_encode_errors():
    X, images, _ = _data()
    with pytest.raises(NotFittedError):
        BGANHasher(8).encode(X)
    hasher = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(X, images=images, progress=False)
    with pytest.raises(InputError, match="fitted on 12"):
        hasher.encode(X[:, :5])
    with pytest.raises(InputError, match="encodes features"):
        hasher.encode(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="no image file"):
        ImagePipeline(hasher).encode_paths(["/nonexistent/image.png"])
    with pytest.raises(InputError, match="NaN"):
        hasher.encode(np.full((2, 12), np.nan))


def test_pixel_encoder_trains_from_images_and_refuses_features():
    X, images, _ = _data(n=16)
    hasher = BGANHasher(8, preset="cpu", random_state=0, encoder="vgg", **TINY)
    hasher.fit(X, images=images, progress=False)
    codes = hasher.encode(images)
    assert codes.shape == (16, 8)
    with pytest.raises(InputError, match="encodes pixels"):
        hasher.encode(X)
    pipeline = ImagePipeline(hasher)
    assert np.array_equal(pipeline.encode_images(list(images)), codes)
    with pytest.raises(InputError, match="encodes pixels"):
        pipeline.encode_features(X)


def test_encode_from_features_images_paths_and_dataset_agree(tmp_path):
    from bganhash.datasets.base import ArraySource, Dataset
    from bganhash.features.config import FeatureConfig
    from bganhash.features.extract import extract_features

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    images[:5, :8] = 255  # two kinds of image, so the features differ
    dataset = Dataset("tiny", ArraySource(images), [f"tiny/{i}" for i in range(10)])
    feature_config = FeatureConfig(image_size=32, batch_size=4)
    X = extract_features(dataset, feature_config, cache=False, progress=False)
    hasher = BGANHasher(16, preset="cpu", random_state=0, feature_config=feature_config, **TINY)
    hasher.fit(X, images=images, progress=False)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    from_features = hasher.encode(X)
    pipeline = ImagePipeline(hasher)  # the feature configuration comes from the hasher
    assert pipeline.feature_config == feature_config
    assert np.array_equal(pipeline.encode_images(list(images)), from_features)
    assert np.array_equal(pipeline.encode_paths(paths), from_features)
    assert np.array_equal(pipeline.encode_paths([str(p) for p in paths]), from_features)
    assert np.array_equal(pipeline.encode_dataset(dataset), from_features)


@pytest.mark.parametrize("height, width, cap, expected",
                         [(8, 8, 64, 8), (32, 32, 64, 32), (28, 28, 64, 16), (300, 200, 64, 64), (32, 32, 16, 16)])
def test_default_reconstruction_size(height, width, cap, expected):
    assert default_reconstruction_size(height, width, cap) == expected


def test_reconstruction_size_follows_the_config():
    X, _, _ = _data(n=12)
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    small = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(X, images=images, progress=False)
    assert small.reconstruction_size_ == 16  # the cpu preset caps reconstructions at 16x16
    large = BGANHasher(8, preset="cpu", random_state=0, reconstruction_size=32, **TINY).fit(X, images=images,
                                                                                          progress=False)
    assert large.reconstruction_size_ == 32


def test_config_json_round_trip_and_unknown_keys():
    config = make_config("paper", 24, k1=10, activation="app")
    document = json.loads(json.dumps(config.to_dict()))
    assert BGANConfig.from_dict(document) == config
    document["loss"]["lambda"] = 1
    with pytest.raises(InputError, match="lambda"):
        BGANConfig.from_dict(document)
    with pytest.raises(InputError, match="typo"):
        BGANConfig.from_dict({"typo": 1})


def test_presets():
    assert make_config("auto").preset == ("paper" if torch.cuda.is_available() else "cpu")
    paper, cpu = make_config("paper"), make_config("cpu")
    assert (paper.network.encoder, paper.network.width_factor, paper.train.optimizer, paper.train.lr,
            paper.train.batch_size, paper.neighborhood.k1, paper.neighborhood.k2) == \
        ("vgg", 1.0, "sgd", 0.01, 256, 20, 30)
    assert (cpu.network.encoder, cpu.train.device) == ("head", "cpu")
    assert make_config("cpu", loss=LossConfig(use_adversarial=False)).loss.use_adversarial is False
    assert make_config("cpu", network={"encoder": "vgg"}).network == NetworkConfig(encoder="vgg")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"activation": "relu"}, "activation"),
        ({"k1": 0}, "k1"),
        ({"lr": -1.0}, "lr"),
        ({"beta_schedule": ()}, "beta_schedule"),
        ({"reconstruction_size": 24}, "reconstruction_size"),
        ({"image_size": 24}, "reconstruction_size"),  # the former name is an alias
        ({"use_neighborhood": False, "use_content": False, "use_adversarial": False}, "at least one"),
        ({"encoder": "resnet"}, "encoder"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"hash_init": "pca"}, "hash_init"),
        ({"hash_init": "itq", "encoder": "vgg"}, "needs encoder='head'"),
    ],
)
def test_invalid_settings_name_the_field(overrides, match):
    with pytest.raises(InputError, match=match):
        make_config("cpu", **overrides)
    with pytest.raises(InputError):
        make_config("gpu")


def test_fit_with_checkpoints_and_resume(tmp_path):
    X, images, _ = _data()
    first = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(
        X, images=images, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.json").is_file() and list(tmp_path.glob("weights-*.safetensors"))
    again = BGANHasher(8, preset="cpu", random_state=0, **TINY).fit(
        X, images=images, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert np.array_equal(again.encode(X), first.encode(X)) and again.history_ == first.history_


def test_fit_setting_errors():
    X, images, _ = _data()
    with pytest.raises(InputError, match="checkpoint_dir"):
        BGANHasher(8, preset="cpu", **TINY).fit(X, images=images, resume=True, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            BGANHasher(8, preset="cpu", device="cuda", **TINY).fit(X, images=images, progress=False)
    with pytest.raises(InputError, match="at least 2"):
        BGANHasher(8, preset="cpu", **TINY).fit(X[:1], images=images[:1], progress=False)


def test_training_stops_with_a_clear_error_at_the_first_nan_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from bganhash.bgan import train
    from bganhash.bgan.train import TrainingDiverged

    X, images, _ = _data()
    real_loss, calls = train.neighborhood_loss, {"n": 0}

    def diverging(codes, targets, balance=False):
        calls["n"] += 1
        loss = real_loss(codes, targets, balance)
        return loss * float("nan") if calls["n"] > 4 else loss  # stage 1 has 3 steps: NaN in stage 2

    monkeypatch.setattr(train, "neighborhood_loss", diverging)
    with pytest.raises(TrainingDiverged, match=r"diverged at beta stage 2, epoch 1, step 2: loss_n=nan"):
        BGANHasher(8, preset="cpu", **TINY).fit(X, images=images, checkpoint_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["next_stage"] == 1  # stage 1's checkpoint stays
