"""The paper preset (a VGG encoder trained from pixels) end to end on digits with a tiny schedule: train,
score, save, resume, encode images, index with the saved model; its encoder's initialisation; a short
run that beats LSH; and `--set` values that do not parse or validate, each a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits

from bganhash.bgan.config import make_config
from bganhash.bgan.model import BGANNetworks, VGGEncoder, images_to_tensor
from bganhash.cli import main
from conftest import write_digits

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# The paper preset on the CPU, narrowed: 1/16 of the widths, a small FC6/FC7, one epoch of one beta stage.
TINY_PAPER = ("--preset", "paper", "--set", "device=cpu", "--set", "width_factor=0.0625",
              "--set", "head_hidden=[32]", "--set", "epochs_per_stage=1", "--set", "beta_schedule=[1]")


def run(*args: str):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture
def digits_features(tmp_path):
    path = tmp_path / "digits-pixels.npy"
    np.save(path, load_digits().data.astype(np.float32))
    return path


def _digit_images(n: int) -> np.ndarray:
    gray = np.rint(load_digits().images[:n] * 255 / 16).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=3)


def test_paper_preset_trains_scores_saves_resumes_encodes_and_indexes(digits_features, tmp_path):
    out = tmp_path / "run"
    args = ("train", "--features", digits_features, "--bits", "16", "--out", out, "--compare", "lsh", "--json",
            *TINY_PAPER)
    result = run(*args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert 0 < document["map"]["bgan"]["16"] <= 1
    model = document["models"]["16"]
    config = json.loads((tmp_path / "run" / "16bit" / "model" / "hasher.json").read_text())
    assert "vgg" in json.dumps(config)
    resumed = run(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["map"]["bgan"] == document["map"]["bgan"]

    photos = tmp_path / "photos"
    write_digits(photos, range(12), size=16)
    codes_path = tmp_path / "codes.npy"
    encoded = run("encode", model, photos, "--out", codes_path)
    assert encoded.exit_code == 0, encoded.output
    codes = np.load(codes_path)
    assert codes.shape == (12, 16) and set(np.unique(codes)) <= {-1, 1}
    refused = run("encode", model, digits_features, "--out", tmp_path / "f.npy")
    assert refused.exit_code == 2 and "pixels" in refused.output

    indexed = run("index", photos, "--model", model, "--out", tmp_path / "photos.index")
    assert indexed.exit_code == 0, indexed.output
    assert "12 images" in indexed.output


def test_vgg_encoder_gives_images_different_codes_at_initialisation():
    """PyTorch's default initialisation made z the same for every image (its spread over images was
    1e-9 of its size) through the 15 ReLU layers, so every image got one code; He initialisation and
    at least 32x32 inputs keep the images apart from the first step."""
    config = make_config("paper", 32, device="cpu", width_factor=0.0625, head_hidden=(256, 256))
    torch.manual_seed(0)
    networks = BGANNetworks(config, 64, 8)
    assert isinstance(networks.encoder, VGGEncoder) and networks.encoder.input_size == 32
    z = networks.project(images_to_tensor(_digit_images(256), 8)).detach()
    spread = z.std(dim=0).mean() / z.abs().mean()
    assert spread > 0.05
    assert len(np.unique((z >= 0).numpy(), axis=0)) > 10


def test_hash_batchnorm_starts_every_bit_balanced_and_at_unit_scale():
    """Without it the VGG's z has one sign for most bits over all images and |z| of a few hundredths, where
    l_N's gradient vanishes; with it each bit is standardised over the batch."""
    images = images_to_tensor(_digit_images(256), 8)
    balance = {}
    for normalised in (False, True):
        config = make_config("paper", 32, device="cpu", width_factor=0.0625, head_hidden=(256, 256),
                             hash_batchnorm=normalised)
        torch.manual_seed(0)
        networks = BGANNetworks(config, 64, 8).train()
        z = networks.project(images).detach()
        positive = (z >= 0).float().mean(dim=0)
        balance[normalised] = float((2 * torch.minimum(positive, 1 - positive)).mean())
        if normalised:
            torch.testing.assert_close(z.std(dim=0), torch.ones(32), atol=0.01, rtol=0)
    assert balance[True] > 0.8 > 0.3 > balance[False]


@pytest.mark.slow
def test_a_short_paper_preset_run_beats_lsh_on_digits():
    """30 epochs of SGD on 1,597 digits (about 30 s on one thread) with the cpu preset's neighbourhood."""
    from bganhash.bgan.estimator import BGANHasher
    from bganhash.research.protocol import fit_bgan, prepare_protocol, run_baselines, score_hasher

    data = prepare_protocol("digits", progress=False)
    lsh = run_baselines(data, [32], ["lsh"], seed=0).scores["lsh"][32]
    hasher = BGANHasher(32, preset="paper", random_state=0, device="cpu", width_factor=0.0625,
                        head_hidden=[256, 256], epochs_per_stage=15, beta_schedule=[1, 2], num_threads=1,
                        k1=50, k2=50, feature_transform="sqrt_l2_center")
    fit_bgan(hasher, data, progress=False)
    assert score_hasher(hasher, data) > lsh + 0.02


@pytest.mark.parametrize("setting, named", [
    ("beta_schedule=1", "beta_schedule"), ("lr=abc", "lr"), ("k1=-3", "k1"), ("unknown_key=1", "unknown_key"),
    ("head_hidden=x", "head_hidden"), ("generator_widths=3", "generator_widths"), ("loss=3", "loss"),
    ("use_content=maybe", "use_content"), ("seed=1", "--seed"), ("n_bits=8", "--bits"),
])
@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_a_bad_set_value_is_a_one_line_error(digits_features, tmp_path, command, setting, named):
    result = run(command, "--features", digits_features, "--out", tmp_path / "out", "--set", setting)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and named in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
