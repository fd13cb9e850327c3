"""The command line, driven through click's runner as a user would type it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits

from bganhash.cli import main


@pytest.fixture
def digits_features(tmp_path):
    """Digits' raw 64 pixel values as 'precomputed features', so CLI tests skip the backbone."""
    path = tmp_path / "digits-pixels.npy"
    np.save(path, load_digits().data.astype(np.float32))
    return path


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_command_has_help():
    result = run("--help")
    assert result.exit_code == 0
    for command in main.commands:
        sub = run(command, "--help")
        assert sub.exit_code == 0, command
        assert "Usage" in sub.output


def test_baselines_json_reports_every_method_and_bit_length(digits_features, tmp_path):
    out = tmp_path / "res"
    result = run("baselines", "--features", str(digits_features), "--bits", "8,16", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document["map"]) == {"lsh", "pcah", "itq", "sh", "sph"}
    for row in document["map"].values():
        assert set(row) == {"8", "16"}
        assert all(0.0 < value <= 1.0 for value in row.values())
    # digits pixels are very informative: ITQ must be far above the 0.1 of random codes
    assert document["map"]["itq"]["16"] > 0.4
    assert (out / "table3.md").is_file() and (out / "split.json").is_file()
    assert "ITQ (ours)" in (out / "table3.md").read_text()


def test_baselines_text_output_names_the_ranking_rule(digits_features, tmp_path):
    result = run("baselines", "--features", str(digits_features), "--bits", "8", "--methods", "itq",
                 "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "ties broken by database order" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--bits", "12,abc"), "comma-separated integers"),
        (("--bits", "0"), "between 1 and 1024"),
        (("--methods", "itq,foo"), "unknown method"),
    ],
)
def test_bad_options_exit_2_with_a_message(digits_features, args, message):
    result = run("baselines", "--features", str(digits_features), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_missing_features_file_is_a_one_line_error(tmp_path):
    result = run("baselines", "--features", str(tmp_path / "nope.npy"))
    assert result.exit_code == 2
    assert "nope.npy" in result.output
    assert "Traceback" not in result.output


def test_features_with_wrong_row_count_are_refused(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((10, 4), dtype=np.float32))
    result = run("baselines", "--features", str(path))
    assert result.exit_code == 2
    assert "short.npy" in result.output


def test_features_with_nan_are_refused(tmp_path):
    values = load_digits().data.astype(np.float32)
    values[3, 2] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, values)
    result = run("baselines", "--features", str(path))
    assert result.exit_code == 2
    assert "nan.npy" in result.output or "NaN" in result.output


def test_missing_dataset_path_is_a_one_line_error(tmp_path):
    result = run("baselines", "--dataset", "folder", "--data", str(tmp_path / "no-such-folder"))
    assert result.exit_code == 2
    assert "no-such-folder" in result.output


@pytest.mark.slow
def test_baselines_with_no_arguments_runs_on_digits_with_the_backbone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("baselines", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dataset"] == "digits"
    assert document["map"]["itq"]["32"] > document["map"]["lsh"]["12"] * 0.5
    assert (tmp_path / "results" / "baselines-digits" / "table3.json").is_file()


@pytest.mark.slow
def test_train_scores_bgan_next_to_baselines_and_resumes(digits_features, tmp_path):
    out = tmp_path / "run"
    args = ("train", "--features", str(digits_features), "--bits", "16", "--out", str(out), "--json",
            "--set", "epochs_per_stage=2")
    result = run(*args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document["map"]) == {"bgan", "lsh", "itq"}
    assert document["map"]["bgan"]["16"] > document["map"]["lsh"]["16"]
    model = document["models"]["16"]
    assert (out / "16bit" / "checkpoints").is_dir()
    resumed = json.loads(run(*args, "--resume").stdout)
    assert resumed["map"]["bgan"] == document["map"]["bgan"]

    codes_path = tmp_path / "codes.npy"
    encoded = run("encode", model, str(digits_features), "--out", str(codes_path), "--json")
    assert encoded.exit_code == 0, encoded.output
    codes = np.load(codes_path)
    assert codes.shape == (1797, 16) and set(np.unique(codes)) <= {-1, 1}
    packed = run("encode", model, str(digits_features), "--out", str(tmp_path / "p.npy"), "--packed")
    assert packed.exit_code == 0 and np.load(tmp_path / "p.npy").shape == (1797, 2)


def test_train_rejects_a_malformed_override(digits_features):
    result = run("train", "--features", str(digits_features), "--set", "no-equals-sign")
    assert result.exit_code == 2
    assert "field=value" in result.output


def test_train_rejects_an_unknown_config_field(digits_features, tmp_path):
    result = run("train", "--features", str(digits_features), "--bits", "8", "--out", str(tmp_path),
                 "--set", "no_such_field=3")
    assert result.exit_code == 2
    assert "no_such_field" in result.output


def test_encode_refuses_features_of_the_wrong_width(digits_features, tmp_path):
    from bganhash.hashers import ITQ

    model = ITQ(8, random_state=0).fit(np.random.default_rng(0).normal(size=(100, 10))).save(tmp_path / "itq")
    result = run("encode", str(model), str(digits_features), "--out", str(tmp_path / "c.npy"))
    assert result.exit_code == 2
    assert "64 features" in result.output


def test_precision_alone_keeps_the_size_that_suits_the_data():
    from bganhash.cli._common import feature_config
    from bganhash.datasets import load_dataset

    opened = []

    def loader():
        opened.append(1)
        return load_dataset("digits")

    assert feature_config(None, None, load_dataset_once=loader) is None and not opened  # the library picks
    config = feature_config(None, None, "bf16", load_dataset_once=loader)
    assert (config.precision, config.image_size) == ("bf16", 96) and opened  # digits' own size, not 224
    assert feature_config(None, 128, "bf16", load_dataset_once=loader).image_size == 128 and len(opened) == 1
    assert feature_config(None, None, dataset=load_dataset("digits")).image_size == 96  # a dataset in hand


def test_features_with_flip_from_the_command_line_are_cached_apart(tmp_path):
    documents = {}
    for flag in ((), ("--flip",)):
        result = run("features", "--image-size", "64", *flag, "--json", "--out", tmp_path / f"f{len(flag)}.npy")
        assert result.exit_code == 0, result.output
        documents[bool(flag)] = json.loads(result.stdout)
    assert documents[True]["flip"] and not documents[False]["flip"] and not documents[True]["cached"]
    plain, flipped = np.load(tmp_path / "f0.npy"), np.load(tmp_path / "f1.npy")
    assert plain.shape == flipped.shape and not np.allclose(plain, flipped, atol=1e-3)


@pytest.mark.slow
def test_features_in_bf16_from_the_command_line_are_close_to_fp32_and_cached_apart():
    pytest.importorskip("openvino")
    documents = {}
    for precision in ("fp32", "bf16"):
        result = run("features", "--precision", precision, "--json")
        assert result.exit_code == 0, result.output
        documents[precision] = json.loads(result.stdout)
    assert documents["bf16"]["precision"] == "bf16" and documents["bf16"]["image_size"] == 96
    assert not documents["bf16"]["cached"]  # bf16 features are not read from fp32's cache file
    from bganhash.datasets import load_dataset
    from bganhash.features.config import FeatureConfig
    from bganhash.features.extract import extract_features

    digits = load_dataset("digits")
    fp32, bf16 = (extract_features(digits, FeatureConfig(image_size=96, precision=p), progress=False)
                  for p in ("fp32", "bf16"))
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert 0.95 < cosine.min() and not np.array_equal(fp32, bf16)
