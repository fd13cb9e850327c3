"""Issue 15, item 3: a checkpoint is one unit. A kill between its files leaves the previous checkpoint whole (a
resume continues exactly), a damaged part is refused, and a resume with no checkpoint says it starts afresh."""

from __future__ import annotations

import json

import pytest
import torch

from bganhash._io import UnverifiedFileWarning
from bganhash._validation import InputError
from bganhash.bgan import checkpoint
from bganhash.bgan.checkpoint import LEGACY_FILES, MANIFEST_FILE, STATE_FILE, checkpoint_files
from bganhash.bgan.config import make_config
from bganhash.bgan.model import BGANNetworks
from bganhash.bgan.train import Trainer
from test_train import D, _tiny_problem

pytestmark = pytest.mark.usefixtures("torch_one_thread")
CONFIG = make_config("cpu", 8, batch_size=16, epochs_per_stage=1, beta_schedule=(1.0, 2.0, 5.0), head_hidden=(16,),
                     width_factor=1 / 16, discriminator_dense=64)
WRITES_PER_CHECKPOINT = 6  # weights, optimiser tensors, optimiser JSON, config, history, then checkpoint.json


class _Killed(Exception):
    pass


def trainer(checkpoint_dir=None, seed: int | None = None) -> Trainer:
    data, _ = _tiny_problem()
    torch.manual_seed(CONFIG.train.seed if seed is None else seed)
    return Trainer(CONFIG, BGANNetworks(CONFIG, D, 8), data, checkpoint_dir=checkpoint_dir, progress=False)


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, torch.Tensor]:
    run = trainer()
    run.fit()
    return {key: value.clone() for key, value in run.networks.state_dict().items()}


def kill_at_write(monkeypatch, number: int) -> None:
    """Make the `number`-th file write of the checkpoint module (counting from 1) die before it lands."""
    count = {"writes": 0}

    def dying(original):
        def write(*args, **kwargs):
            count["writes"] += 1
            if count["writes"] == number:
                raise _Killed(f"killed at write {number}")
            return original(*args, **kwargs)
        return write

    for name in ("write_tensors", "write_json", "write_verified_json"):
        monkeypatch.setattr(checkpoint, name, dying(getattr(checkpoint, name)))


@pytest.mark.parametrize("killed_at", range(1, WRITES_PER_CHECKPOINT + 1))
def test_a_kill_inside_the_second_checkpoint_resumes_exactly_from_the_first(tmp_path, monkeypatch, uninterrupted,
                                                                          killed_at):
    with monkeypatch.context() as patch:
        kill_at_write(patch, WRITES_PER_CHECKPOINT + killed_at)
        with pytest.raises(_Killed):
            trainer(tmp_path).fit()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["next_stage"] == 1
    resumed = trainer(tmp_path, seed=123)  # another initialisation: everything must come from the checkpoint
    assert len(resumed.fit(resume=True)) == 3
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed.networks.state_dict()[key]), key


def test_the_parts_of_earlier_checkpoints_are_removed(tmp_path):
    trainer(tmp_path).fit()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([MANIFEST_FILE, *(path.name for path in checkpoint_files(tmp_path).values())])
    assert all("-003-" in name for name in names if name != MANIFEST_FILE)


@pytest.mark.parametrize("part", ["weights", "optimizer_tensors", "optimizer", "config", "history"])
def test_a_damaged_part_is_refused_not_resumed(tmp_path, part):
    trainer(tmp_path).fit()
    path = checkpoint_files(tmp_path)[part]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        trainer(tmp_path).fit(resume=True)


def test_an_edited_manifest_is_refused(tmp_path):
    trainer(tmp_path).fit()
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "next_stage": 1}))
    with pytest.raises(InputError, match="does not match its checksum"):
        trainer(tmp_path).fit(resume=True)


@pytest.mark.parametrize("setup, match", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("no_manifest", "no complete checkpoint"),
    ("legacy_without_state", "no complete checkpoint"),
])
def test_a_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, setup, match):
    directory = tmp_path / "checkpoints"
    if setup != "missing":
        directory.mkdir()
    if setup in ("no_manifest", "legacy_without_state"):
        trainer(directory).fit()
        if setup == "legacy_without_state":
            _as_legacy(directory)
            (directory / STATE_FILE).unlink()
        else:
            (directory / MANIFEST_FILE).unlink()
    with pytest.warns(UserWarning, match=f"{match}.*training starts from scratch"):
        history = trainer(directory).fit(resume=True)
    assert len(history) == 3


def _as_legacy(directory):
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for role, path in checkpoint_files(directory).items():
        path.rename(directory / LEGACY_FILES[role])
    (directory / STATE_FILE).write_text(json.dumps({key: manifest[key] for key in ("stage", "epoch", "next_stage")}))
    (directory / MANIFEST_FILE).unlink()


def test_a_checkpoint_of_the_earlier_layout_resumes_with_a_warning_and_is_replaced(tmp_path, uninterrupted):
    with pytest.MonkeyPatch.context() as patch:
        kill_at_write(patch, WRITES_PER_CHECKPOINT + 1)
        with pytest.raises(_Killed):
            trainer(tmp_path).fit()
    _as_legacy(tmp_path)
    with pytest.warns(UnverifiedFileWarning, match="before checksums"):
        resumed = trainer(tmp_path, seed=5)
        resumed.fit(resume=True)
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed.networks.state_dict()[key]), key
    assert not (tmp_path / STATE_FILE).exists() and not any((tmp_path / n).exists() for n in LEGACY_FILES.values())
    assert (tmp_path / MANIFEST_FILE).is_file()


def test_a_checkpoint_saved_before_a_field_was_added_still_resumes(tmp_path):
    """A config saved without a field added since compares at that field's default; a real change still
    stops the resume, naming the field."""
    from bganhash._validation import InputError
    from bganhash.bgan.checkpoint import check_same_config
    from bganhash.bgan.config import make_config

    current = make_config("cpu", 32).to_dict()
    saved = make_config("cpu", 32).to_dict()
    del saved["loss"]["bit_spread_weight"], saved["loss"]["positive_target"], saved["loss"]["negative_target"]
    check_same_config(saved, current, tmp_path)
    saved["loss"]["lambda_content"] = 0.5
    with pytest.raises(InputError, match=r"differs in \['loss.lambda_content'\]"):
        check_same_config(saved, current, tmp_path)
    changed = make_config("cpu", 32, bit_spread_weight=1.0).to_dict()
    with pytest.raises(InputError, match="loss.bit_spread_weight"):
        check_same_config(saved | {"loss": {**saved["loss"], "lambda_content": 0.01}}, changed, tmp_path)
