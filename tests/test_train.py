"""The training loop: the three updates, ablation switches, learning, determinism, checkpoints, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bganhash import InputError
from bganhash.bgan.checkpoint import (
    CONFIG_FILE,
    LEGACY_FILES,
    MANIFEST_FILE,
    STATE_FILE,
    checkpoint_files,
    join_optimizer_states,
    read_tensors,
    split_optimizer_states,
)
from bganhash.bgan.config import make_config
from bganhash.bgan.model import BGANNetworks
from bganhash.bgan.train import Trainer, TrainingData

N, D, CLASSES = 48, 10, 4


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tiny_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % CLASSES
    centers = rng.standard_normal((CLASSES, D)) * 3
    features = (centers[labels] + rng.standard_normal((N, D))).astype(np.float32)
    images = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    similarity = sp.csr_matrix(labels[:, None] == labels[None, :])
    return TrainingData(torch.from_numpy(features), images, similarity), labels


def _config(**overrides):
    settings = dict(batch_size=16, epochs_per_stage=2, beta_schedule=(1.0, 2.0), head_hidden=(16,),
                    width_factor=1 / 16, discriminator_dense=64)
    settings.update(overrides)
    return make_config("cpu", 8, **settings)


def _trainer(config, data, **kwargs):
    torch.manual_seed(config.train.seed)
    return Trainer(config, BGANNetworks(config, D, 8), data, progress=False, **kwargs)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_one_step_updates_all_three_networks():
    data, _ = _tiny_problem()
    trainer = _trainer(_config(), data)
    nets = trainer.networks
    before = {name: _params(getattr(nets, name)) for name in ("encoder", "hash_layer", "generator", "discriminator")}
    stats = trainer.train_step(np.arange(16), 1.0)
    assert all(_changed(before[name], getattr(nets, name)) for name in before)
    assert {"loss_n", "loss_c", "loss_a", "loss_g", "d_real", "d_fake", "bit_balance"} <= set(stats)


def test_without_adversarial_loss_the_discriminator_is_not_updated():
    data, _ = _tiny_problem()
    trainer = _trainer(_config(use_adversarial=False), data)
    before = _params(trainer.networks.discriminator)
    stats = trainer.train_step(np.arange(16), 1.0)
    assert not _changed(before, trainer.networks.discriminator)
    assert "discriminator" not in trainer.optimizers and "d_real" not in stats and stats["loss_g"] == 0.0


def test_without_reconstruction_losses_there_is_no_generator():
    data, _ = _tiny_problem()
    trainer = _trainer(_config(use_content=False, use_adversarial=False), data)
    assert set(trainer.optimizers) == {"encoder"}
    stats = trainer.train_step(np.arange(16), 1.0)
    assert stats["loss_c"] == 0.0 and stats["loss_n"] > 0


def test_adversarial_loss_does_not_reach_the_encoder():
    """Eq. 18: the encoder descends l_N + l_C only; with both off it must stay put while G moves."""
    data, _ = _tiny_problem()
    trainer = _trainer(_config(use_neighborhood=False, use_content=False, quantization_weight=0.0), data)
    encoder_before = _params(trainer.networks.encoder) + _params(trainer.networks.hash_layer)
    generator_before = _params(trainer.networks.generator)
    trainer.train_step(np.arange(16), 1.0)
    after = list(trainer.networks.encoder.parameters()) + list(trainer.networks.hash_layer.parameters())
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, after))
    assert _changed(generator_before, trainer.networks.generator)


def _encoder_gradients(**overrides) -> list[torch.Tensor]:
    """The gradients the encoder and W_h stepped along in one train_step of a fresh trainer."""
    data, _ = _tiny_problem()
    trainer = _trainer(_config(**overrides), data)
    trainer.train_step(np.arange(16), 1.0)
    modules = (trainer.networks.encoder, trainer.networks.hash_layer)
    return [p.grad.detach().clone() for module in modules for p in module.parameters()]


def test_adversarial_loss_reaches_the_encoder_only_when_configured():
    """Eq. 18 (the default): l_N + l_A gives the encoder exactly l_N's gradient; the authors' way
    (adversarial_reaches_encoder) adds lambda_2 l_A's gradient through the generator."""
    n_only = _encoder_gradients(use_content=False, use_adversarial=False)
    eq18 = _encoder_gradients(use_content=False, use_adversarial=True)
    authors = _encoder_gradients(use_content=False, use_adversarial=True, adversarial_reaches_encoder=True)
    assert all(torch.equal(a, b) for a, b in zip(n_only, eq18))
    differences = [float((a - b).abs().max()) for a, b in zip(eq18, authors)]
    assert max(differences) > 1e-6


def test_adversarial_alone_moves_the_encoder_the_authors_way():
    data, _ = _tiny_problem()
    trainer = _trainer(_config(use_neighborhood=False, use_content=False, quantization_weight=0.0,
                               adversarial_reaches_encoder=True), data)
    before = _params(trainer.networks.hash_layer)
    trainer.train_step(np.arange(16), 1.0)
    assert _changed(before, trainer.networks.hash_layer)


def test_content_loss_reaches_the_encoder():
    data, _ = _tiny_problem()
    trainer = _trainer(_config(use_neighborhood=False, use_adversarial=False, quantization_weight=0.0), data)
    before = _params(trainer.networks.hash_layer)
    trainer.train_step(np.arange(16), 1.0)
    assert _changed(before, trainer.networks.hash_layer)


def test_training_reduces_neighborhood_loss_and_codes_respect_s():
    data, labels = _tiny_problem()
    trainer = _trainer(_config(epochs_per_stage=15, lr=3e-3), data)
    history = trainer.fit()
    assert len(history) == 30 and history[-1]["loss_n"] < 0.7 * history[0]["loss_n"]
    codes = trainer.networks.codes(data.inputs).numpy().astype(int)
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(N, dtype=bool)
    # trained codes: neighbours in S are much closer in Hamming distance than non-neighbours
    assert hamming[same & off].mean() + 2 < hamming[~same].mean()
    random_codes = np.sign(np.random.default_rng(0).standard_normal(codes.shape))
    random_hamming = (random_codes[:, None, :] != random_codes[None, :, :]).sum(-1)
    assert hamming[~same].mean() - hamming[same & off].mean() > \
        random_hamming[~same].mean() - random_hamming[same & off].mean() + 2


def test_history_records_losses_and_discriminator_outputs():
    data, _ = _tiny_problem()
    history = _trainer(_config(epochs_per_stage=1), data, evaluate=lambda nets: 0.25).fit()
    assert [(r["stage"], r["beta"], r["epoch"]) for r in history] == [(0, 1.0, 0), (1, 2.0, 0)]
    for record in history:
        assert 0 <= record["d_real"] <= 1 and 0 <= record["d_fake"] <= 1 and 0 <= record["bit_balance"] <= 1
        assert record["val_map"] == 0.25 and record["seconds"] > 0


def test_same_seed_same_codes_other_seed_other_codes():
    data, _ = _tiny_problem()
    runs = []
    for seed in (3, 3, 4):
        trainer = _trainer(_config(seed=seed, epochs_per_stage=1), data)
        trainer.fit()
        runs.append(trainer.networks.codes(data.inputs))
    assert torch.equal(runs[0], runs[1])
    z = [_trainer(_config(seed=s), data).networks.project(data.inputs) for s in (3, 4)]
    assert not torch.equal(z[0], z[1])


def test_checkpoint_files_and_contents(tmp_path):
    data, _ = _tiny_problem()
    trainer = _trainer(_config(epochs_per_stage=1), data, checkpoint_dir=tmp_path)
    trainer.fit()
    parts = checkpoint_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_FILE, *(p.name for p in parts.values())])
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert (manifest["stage"], manifest["epoch"], manifest["next_stage"]) == (1, 1, 2)
    assert json.loads(parts["config"].read_text()) == trainer.config.to_dict()
    assert len(json.loads(parts["history"].read_text())) == 2


class _Interrupt(Exception):
    pass


def test_resume_after_first_stage_gives_identical_codes(tmp_path):
    data, _ = _tiny_problem()
    config = _config(epochs_per_stage=2, beta_schedule=(1.0, 2.0, 5.0))
    uninterrupted = _trainer(config, data)
    uninterrupted.fit()

    def stop_in_second_stage(nets):
        if len(interrupted.history) >= config.train.epochs_per_stage:
            raise _Interrupt
        return 0.0

    interrupted = _trainer(config, data, checkpoint_dir=tmp_path, evaluate=stop_in_second_stage)
    with pytest.raises(_Interrupt):
        interrupted.fit()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["next_stage"] == 1

    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed = Trainer(config, BGANNetworks(config, D, 8), data, checkpoint_dir=tmp_path, progress=False)
    history = resumed.fit(resume=True)
    assert len(history) == 6
    assert torch.equal(resumed.networks.codes(data.inputs), uninterrupted.networks.codes(data.inputs))
    for key, value in uninterrupted.networks.state_dict().items():
        assert torch.equal(value, resumed.networks.state_dict()[key]), key


def test_resume_with_another_config_is_refused(tmp_path):
    data, _ = _tiny_problem()
    _trainer(_config(epochs_per_stage=1), data, checkpoint_dir=tmp_path).fit()
    other = _trainer(_config(epochs_per_stage=1, lr=0.5), data, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="train.lr"):
        other.fit(resume=True)


def test_resume_from_a_checkpoint_saved_under_the_former_config_names(tmp_path):
    """Checkpoints written before network.image_size became reconstruction_size still resume."""
    data, _ = _tiny_problem()
    config = _config(epochs_per_stage=1, beta_schedule=(1.0, 2.0, 5.0))
    uninterrupted = _trainer(config, data)
    uninterrupted.fit()
    first = _trainer(_config(epochs_per_stage=1, beta_schedule=(1.0,)), data, checkpoint_dir=tmp_path)
    first.fit()
    _as_checkpoint_before_checksums(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    network = saved["network"]
    network["image_size"], network["max_image_size"] = network.pop("reconstruction_size"), \
        network.pop("max_reconstruction_size")
    saved["train"]["beta_schedule"] = [1.0, 2.0, 5.0]  # as if stage 0 of the 3-stage run had been saved
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    resumed = _trainer(config, data, checkpoint_dir=tmp_path)
    assert len(resumed.fit(resume=True)) == 3
    for key, value in uninterrupted.networks.state_dict().items():
        assert torch.equal(value, resumed.networks.state_dict()[key]), key
    other = _trainer(_config(epochs_per_stage=1, beta_schedule=(1.0, 2.0, 5.0), max_reconstruction_size=32), data,
                     checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match=r"network.max_reconstruction_size"):
        other.fit(resume=True)


def _as_checkpoint_before_checksums(directory):
    """Rewrite a checkpoint in the layout before checkpoint.json: fixed names, state.json last."""
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for role, path in checkpoint_files(directory).items():
        path.rename(directory / LEGACY_FILES[role])
    (directory / STATE_FILE).write_text(json.dumps({key: manifest[key] for key in ("stage", "epoch", "next_stage")}))
    (directory / MANIFEST_FILE).unlink()


def test_optimizer_state_split_round_trip():
    layer = torch.nn.Linear(3, 2)
    optimizers = (torch.optim.Adam(layer.parameters(), lr=0.1),
                  torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9))
    for optimizer in optimizers:
        layer(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        tensors, document = split_optimizer_states({"enc": optimizer.state_dict()})
        json.dumps(document)
        restored = join_optimizer_states(tensors, json.loads(json.dumps(document)))["enc"]
        original = optimizer.state_dict()
        assert restored["state"].keys() == original["state"].keys()
        for pid, state in original["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(restored["state"][pid][key]), torch.as_tensor(value))


def test_training_uses_the_configured_threads_and_restores_them():
    data, _ = _tiny_problem()
    seen = []
    trainer = _trainer(_config(epochs_per_stage=1, num_threads=1), data,
                       evaluate=lambda nets: seen.append(torch.get_num_threads()) or 0.0)
    torch.set_num_threads(2)
    trainer.fit()
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_resume_from_a_truncated_checkpoint_names_the_file(tmp_path):
    damaged = tmp_path / "weights.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="weights.safetensors"):
        read_tensors(damaged)
