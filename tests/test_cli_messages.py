"""What the commands say, in the command line's own words: dataset options (--data, --download), warnings as
one line, a feature-cache hit, what mAP@all is."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bganhash._validation import InputError
from bganhash.cli import main
from conftest import write_digits


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> Path:
    """120 digits in class folders even/ and odd/, plus a corrupt file in odd/."""
    folder = tmp_path_factory.mktemp("folder") / "digits"
    write_digits(folder, range(120), by_parity=True)
    (folder / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.mark.parametrize("args, said", [
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data PATH"),
    (["--dataset", "nuswide"], "--dataset nuswide needs --data PATH"),
    (["--dataset", "folder", "--download"], "--download fetches CIFAR-10 only"),
    (["--dataset", "cifar10", "--download", "--data", "x"], "--data and --download exclude each other"),
    (["--dataset", "digits", "--data", "x"], "it takes no --data"),
    (["--dataset", "folder", "--data", "no-such-folder"], "--data no-such-folder does not exist"),
])  # fmt: skip
@pytest.mark.parametrize("command", ["features", "baselines", "train", "reproduce"])
def test_dataset_errors_name_the_options(command, args, said):
    message = one_line_error(run(command, *args))
    assert said in message and "data=" not in message and "download=True" not in message


def test_cifar10_without_usable_data_names_both_ways_to_get_it(tmp_path):
    message = one_line_error(run("baselines", "--dataset", "cifar10"))
    assert "--download" in message and "cifar-10-python.tar.gz" in message
    (tmp_path / "notes.txt").write_text("not a dataset")
    wrong = one_line_error(run("features", "--dataset", "cifar10", "--data", tmp_path / "notes.txt"))
    assert "neither a tarball nor a zip" in wrong and "--download" in wrong and "data=" not in wrong


def test_download_fetches_into_the_cache(monkeypatch, tmp_path):
    calls = []

    def fake_download(directory):
        calls.append(Path(directory))
        raise InputError("could not download (no network in this test)")

    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("bganhash.datasets.cifar10.download_cifar10", fake_download)
    result = run("features", "--dataset", "cifar10", "--download")
    assert result.exit_code == 2 and "could not download" in result.stderr
    assert calls == [tmp_path / "cache" / "cifar10"] and "kept for later runs" in result.stderr


def test_warnings_are_one_line_without_python_source(labelled_folder, tmp_path):
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32))
    result = run("baselines", "--dataset", "folder", "--data", labelled_folder, "--features", features,
                 "--bits", "8", "--methods", "itq", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("Warning: skipped 1 unusable file(s)")
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr and ".py:" not in result.stderr
    assert "mAP@all: mean average precision" in result.stdout


def test_a_feature_cache_hit_says_cached(labelled_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path / "cache"))
    first = run("features", "--dataset", "folder", "--data", labelled_folder, "--image-size", "32")
    assert first.exit_code == 0, first.output
    assert "120 images -> 1280-d features" in first.stdout and " s" in first.stdout and "cache" not in first.stdout
    second = run("features", "--dataset", "folder", "--data", labelled_folder, "--image-size", "32")
    assert "read from the cache" in second.stdout and "in 0.0 s" not in second.stdout


def test_train_help_says_what_map_at_all_is():
    help_text = " ".join(run("train", "--help").stdout.split())
    assert "mAP@all is the mean, over the query images, of the average precision" in help_text
    assert "--download" in help_text


def test_library_messages_name_the_python_argument_and_the_cli_option(tmp_path):
    from bganhash.datasets import load_dataset
    from bganhash.registry import load_hasher

    with pytest.raises(InputError) as missing_model:
        load_hasher(tmp_path / "no-model")
    assert "bganhash train" in str(missing_model.value) and "hasher.save(PATH)" in str(missing_model.value)
    assert "save()" not in str(missing_model.value)
    with pytest.raises(InputError) as no_data:
        load_dataset("cifar10")
    message = str(no_data.value)
    assert "data=PATH (CLI: --data PATH)" in message and "download=True (CLI: --download)" in message
    assert "data=..." not in message


def test_under_torchrun_only_local_rank_0_downloads_and_the_others_wait_for_its_file(tmp_path, monkeypatch):
    import hashlib
    import threading

    import bganhash.datasets.cifar10 as cifar10
    from bganhash.cli import _common

    content = b"a stand-in for cifar-10-python.tar.gz"
    downloads = []
    monkeypatch.setenv("BGANHASH_CACHE", str(tmp_path))
    monkeypatch.setattr(cifar10, "OFFICIAL_MD5", hashlib.md5(content).hexdigest())
    monkeypatch.setattr(cifar10, "download_cifar10", lambda target: downloads.append(target) or target / "x.tar.gz")
    monkeypatch.setattr(_common, "_DOWNLOAD_POLL_S", 0.05)
    tarball = tmp_path / "cifar10" / "cifar-10-python.tar.gz"

    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _common.resolve_data("cifar10", None, True) == tmp_path / "cifar10" / "x.tar.gz"
    assert downloads == [tmp_path / "cifar10"]

    monkeypatch.setenv("LOCAL_RANK", "1")
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"an old, partial copy")  # not the right md5: rank 1 keeps waiting

    def finish_download() -> None:
        time.sleep(0.4)
        (tmp_path / "partial").write_bytes(content)
        os.replace(tmp_path / "partial", tarball)

    writer = threading.Thread(target=finish_download)
    writer.start()
    assert _common.resolve_data("cifar10", None, True) == tarball
    writer.join()
    assert len(downloads) == 1  # rank 1 did not download

    tarball.unlink()
    monkeypatch.setattr(_common, "DOWNLOAD_WAIT_S", 0.2)
    with pytest.raises(InputError, match="local rank 1 waited .* for local rank 0 to download"):
        _common.resolve_data("cifar10", None, True)
