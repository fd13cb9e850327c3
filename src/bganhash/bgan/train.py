"""The BGAN training loop (Section 3.4): one plain loop with separate discriminator, generator and
encoder steps, beta raised stage by stage, a checkpoint at the end of every stage.

Per mini-batch: the encoder and hash layer give z and the relaxed codes b = act(beta z); the generator
reconstructs I^R = G(b); the discriminator ascends Eq. 14 on (I, I^R.detach()) (Eq. 20); then the
encoder and W_h descend l_N + lambda1 l_C (+ the quantisation term) (Eq. 18, 21) and the generator
descends lambda1 l_C + lambda2 l_A (Eq. 19), both from one forward pass.

Under torchrun each process trains on its shard of every mini-batch and the result equals one process
with the same global batch; how the gradients are made equal is explained in `bganhash.bgan.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import safetensors.torch
import scipy.sparse
import torch
from torch import nn
from tqdm.auto import tqdm

from bganhash._io import atomic_write, write_json
from bganhash._validation import InputError
from bganhash.bgan.config import BGANConfig
from bganhash.bgan.distributed import World, current_world
from bganhash.bgan.losses import (
    adversarial_objective,
    content_loss,
    discriminator_loss,
    generator_adversarial_loss,
    neighborhood_loss,
    quantization_loss,
)
from bganhash.bgan.model import BGANNetworks, FinetuneEncoder, relax_sign

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"  # written last: a checkpoint counts only once it exists
HISTORY_FILE = "history.json"
WHOLE_BATCH_STATS = ("bit_balance", "loss_n", "loss_q")  # computed on the gathered batch, not per shard


@dataclass
class TrainingData:
    """What one training run reads: encoder inputs, reconstruction targets, and S's positives."""

    inputs: torch.Tensor  # (n, D) features for the head encoder, or (n, 3, s, s) images in [-1, 1]
    images: torch.Tensor | None  # (n, 3, s, s) reconstruction targets in [-1, 1]; None without l_C / l_A
    similarity: scipy.sparse.csr_matrix  # (n, n) bool, the positives of S

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def similarity_block(self, index: np.ndarray, device: torch.device) -> torch.Tensor:
        """S restricted to the batch, as a dense (B, B) float tensor of +1 / -1."""
        block = self.similarity[index][:, index].toarray()
        return torch.from_numpy(np.where(block, 1.0, -1.0).astype(np.float32)).to(device)


def make_optimizer(parameters: list[nn.Parameter], config: BGANConfig) -> torch.optim.Optimizer:
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)


def discriminator_step(discriminator: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor, weight: float = 1.0) -> dict[str, float]:
    """Ascend Eq. 14 (descend its BCE form) on real images and detached reconstructions (Eq. 20).

    `weight` multiplies the loss (a shard's `Shard.weight` in distributed training)."""
    real_logits = discriminator(real)
    fake_logits = discriminator(fake.detach())
    loss = discriminator_loss(real_logits, fake_logits)
    optimizer.zero_grad(set_to_none=True)
    (weight * loss).backward()
    optimizer.step()
    with torch.no_grad():
        return {
            "loss_a": adversarial_objective(real_logits, fake_logits).item(),
            "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(),
        }


def encoder_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: list[nn.Parameter]) -> None:
    """Descend l_N + lambda1 l_C (+ quantisation) w.r.t. the encoder and W_h only (Eq. 18, 21).

    The graph is kept for `generator_step`, which only walks the generator and discriminator parts
    of it, so stepping the encoder's weights here does not disturb it.
    """
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward(inputs=parameters, retain_graph=True)
        optimizer.step()


def generator_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: list[nn.Parameter]) -> None:
    """Descend lambda1 l_C + lambda2 l_A w.r.t. the generator only (Eq. 19)."""
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward(inputs=parameters)
        optimizer.step()


def bit_balance(z: torch.Tensor) -> float:
    """1 when every bit is +1 on half of the batch, 0 when every bit is constant."""
    positive = (z >= 0).float().mean(dim=0)
    return (2 * torch.minimum(positive, 1 - positive)).mean().item()


class _Projection(nn.Module):
    """The encoder and the hash layer as one module (z = W_h^T phi(I)), for DDP to wrap together."""

    def __init__(self, networks: BGANNetworks) -> None:
        super().__init__()
        self.encoder, self.hash_layer = networks.encoder, networks.hash_layer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.hash_layer.project(self.encoder(inputs))


class Trainer:
    """Runs the beta stages of `config.train.beta_schedule` over `data`, checkpointing each stage.

    `evaluate(networks) -> float` (optional) is called after every epoch; its value (e.g. validation
    mAP) goes into the history as `val_map`. `world` (default: `current_world()`, one process unless
    a process group is initialised) shards every batch across processes; rank 0 alone shows progress,
    evaluates and writes checkpoints.
    """

    def __init__(self, config: BGANConfig, networks: BGANNetworks, data: TrainingData,
                 checkpoint_dir: str | Path | None = None, progress: bool = True,
                 evaluate: Callable[[BGANNetworks], float] | None = None, world: World | None = None) -> None:
        self.config = config
        self.networks = networks
        self.world = world or current_world()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = progress and self.world.is_main
        self.evaluate = evaluate
        self.device = torch.device(config.train.device)
        self.world.check_device(self.device)
        self.world.check_batches(len(data), config.train.batch_size)
        self.world.broadcast_state(networks)  # one starting point, whatever each process initialised
        self.data = data if not self.world.is_distributed else \
            TrainingData(data.inputs, data.images, self.world.broadcast_csr(data.similarity))
        # What train_step calls: the modules themselves in one process, DDP wrappers around them under torchrun.
        self.project = self.world.wrap(_Projection(networks),  # a fine-tuned backbone's classifier is unused
                                       find_unused_parameters=isinstance(networks.encoder, FinetuneEncoder))
        self.generate = self.world.wrap(networks.generator) if networks.generator is not None else None
        self.encoder_parameters = [*networks.encoder.parameters(), *networks.hash_layer.parameters()]
        self.optimizers = {"encoder": make_optimizer(self.encoder_parameters, config)}
        if networks.generator is not None:
            self.generator_parameters = list(networks.generator.parameters())
            self.optimizers["generator"] = make_optimizer(self.generator_parameters, config)
        if networks.discriminator is not None and config.loss.use_adversarial:
            self.optimizers["discriminator"] = make_optimizer(list(networks.discriminator.parameters()), config)
            self.discriminate = self.world.wrap(networks.discriminator)
        self.history: list[dict[str, Any]] = []
        self.next_stage = 0

    # ---- one mini-batch --------------------------------------------------------------------------

    def train_step(self, index: np.ndarray, beta: float) -> dict[str, float]:
        """One discriminator, encoder and generator update on the training rows `index` (the global
        batch: each process computes its shard's rows; the per-row losses are shard means, weighted)."""
        loss_cfg, nets = self.config.loss, self.networks
        shard = self.world.shard(index)  # all of `index` in one process
        z = shard.gather(self.project(self.data.inputs[shard.rows].to(self.device)))  # the whole batch's z
        codes = relax_sign(z, beta, loss_cfg.activation)
        stats: dict[str, float] = {"bit_balance": bit_balance(z.detach())}
        zero = z.new_zeros(())
        loss_n = neighborhood_loss(codes, self.data.similarity_block(index, self.device), loss_cfg.balance_pairs) \
            if loss_cfg.use_neighborhood else zero
        loss_q = quantization_loss(z) if loss_cfg.quantization_weight > 0 else zero
        loss_c, loss_a = zero, zero
        if nets.generator is not None:
            real = self.data.images[shard.rows].to(self.device)
            fake = self.generate(shard.own(codes))
            if "discriminator" in self.optimizers:
                stats.update(discriminator_step(self.discriminate, self.optimizers["discriminator"], real, fake,
                                                shard.weight))
            loss_c, loss_a = self._reconstruction_losses(real, fake)
        encoder_loss = (loss_n + loss_cfg.quantization_weight * loss_q
                        + loss_cfg.lambda_content * (shard.weight * loss_c))
        encoder_step(self.optimizers["encoder"], encoder_loss, self.encoder_parameters)
        if nets.generator is not None:
            generator_loss = shard.weight * (loss_cfg.lambda_content * loss_c + loss_cfg.lambda_adversarial * loss_a)
            generator_step(self.optimizers["generator"], generator_loss, self.generator_parameters)
        stats.update({"loss_n": loss_n.item(), "loss_q": loss_q.item(), "loss_c": loss_c.item(),
                      "loss_g": loss_a.item()})
        # the discriminator's and reconstruction figures are this shard's means: make them the batch's
        return {**stats, **shard.mean({k: v for k, v in stats.items() if k not in WHOLE_BATCH_STATS})}

    def _reconstruction_losses(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """l_C (pixel + perceptual MSE) and the generator's adversarial term, as configured."""
        loss_cfg, disc = self.config.loss, self.networks.discriminator
        zero = fake.new_zeros(())
        phi_fake, fake_logits, phi_real = None, None, None
        if disc is not None:
            fake_logits, phi_fake = disc.logits_and_features(fake)
            if loss_cfg.use_content and loss_cfg.perceptual_weight > 0:
                with torch.no_grad():
                    phi_real = disc.features(real)
        loss_c = content_loss(real, fake, phi_real, phi_fake, loss_cfg.perceptual_weight) \
            if loss_cfg.use_content else zero
        loss_a = generator_adversarial_loss(fake_logits) if loss_cfg.use_adversarial else zero
        return loss_c, loss_a

    # ---- the loop ----------------------------------------------------------------------------------

    def epoch_batches(self, stage: int, epoch: int) -> list[np.ndarray]:
        """The epoch's shuffled batches, seeded by (seed, stage, epoch) so a resumed run sees the same."""
        rng = np.random.default_rng([self.config.train.seed, stage, epoch])
        n = len(self.data)
        return np.array_split(rng.permutation(n), max(1, math.ceil(n / self.config.train.batch_size)))

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train every remaining stage; returns the per-epoch history."""
        if resume and self.checkpoint_dir is not None and (self.checkpoint_dir / STATE_FILE).is_file():
            self.load_checkpoint(self.checkpoint_dir)
        train = self.config.train
        n_stages, steps_per_epoch = len(train.beta_schedule), len(self.epoch_batches(0, 0))
        total = n_stages * train.epochs_per_stage * steps_per_epoch
        done = self.next_stage * train.epochs_per_stage * steps_per_epoch
        self.networks.train()
        with torch_threads(train.num_threads), tqdm(total=total, initial=done, desc="BGAN", disable=True if not self.progress else None,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for stage in range(self.next_stage, n_stages):
                for epoch in range(train.epochs_per_stage):
                    self.history.append(self._run_epoch(stage, epoch, bar))
                self.next_stage = stage + 1
                if self.checkpoint_dir is not None:
                    if self.world.is_main:
                        self.save_checkpoint(self.checkpoint_dir)
                    self.world.barrier()  # nobody runs ahead of a checkpoint that is still being written
        self.networks.eval()
        return self.history

    def _run_epoch(self, stage: int, epoch: int, bar: tqdm) -> dict[str, Any]:
        beta = self.config.train.beta_schedule[stage]
        started = time.perf_counter()
        totals: dict[str, float] = {}
        batches = self.epoch_batches(stage, epoch)
        for index in batches:
            stats = self.train_step(index, beta)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.update(1)
            bar.set_postfix({"beta": beta, **{k: f"{v:.3g}" for k, v in stats.items()}}, refresh=False)
        record: dict[str, Any] = {"stage": stage, "beta": beta, "epoch": epoch}
        record.update({key: value / len(batches) for key, value in totals.items()})
        record["seconds"] = time.perf_counter() - started
        if self.evaluate is not None:
            self.networks.eval()
            record["val_map"] = self.world.from_main(lambda: self.evaluate(self.networks))
            self.networks.train()
        return record

    # ---- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self, directory: Path) -> None:
        """Weights, optimiser states, config, history, then state.json, each file written atomically."""
        weights = {k: v.detach().cpu().contiguous() for k, v in self.networks.state_dict().items()}
        with atomic_write(directory / WEIGHTS_FILE, "wb") as handle:
            handle.write(safetensors.torch.save(weights))
        tensors, document = split_optimizer_states({k: o.state_dict() for k, o in self.optimizers.items()})
        with atomic_write(directory / OPTIMIZER_TENSORS_FILE, "wb") as handle:
            handle.write(safetensors.torch.save(tensors))
        write_json(directory / OPTIMIZER_JSON_FILE, document)
        write_json(directory / CONFIG_FILE, self.config.to_dict())
        write_json(directory / HISTORY_FILE, self.history)
        write_json(directory / STATE_FILE, {"stage": self.next_stage - 1, "epoch": self.config.train.epochs_per_stage,
                                            "next_stage": self.next_stage})

    def load_checkpoint(self, directory: Path) -> None:
        """Continue from `directory`: its config must match this run's (device aside)."""
        saved = read_json(directory / CONFIG_FILE)
        check_same_config(saved, self.config.to_dict(), directory)
        weights = read_tensors(directory / WEIGHTS_FILE)
        self.networks.load_state_dict(weights)
        tensors = read_tensors(directory / OPTIMIZER_TENSORS_FILE)
        states = join_optimizer_states(tensors, read_json(directory / OPTIMIZER_JSON_FILE))
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(states[name])
        self.history = read_json(directory / HISTORY_FILE)
        self.next_stage = int(read_json(directory / STATE_FILE)["next_stage"])


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on `count` CPU threads (0: unchanged), then restore torch's setting."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def split_optimizer_states(states: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state dicts -> tensors keyed 'name.param.key' (safetensors) + the rest (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    document: dict[str, Any] = {}
    for name, state_dict in states.items():
        per_param: dict[str, dict[str, Any]] = {}
        for param_id, values in state_dict["state"].items():
            per_param[str(param_id)] = {}
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"{name}.{param_id}.{key}"] = value.detach().cpu().contiguous()
                else:
                    per_param[str(param_id)][key] = value
        document[name] = {"param_groups": state_dict["param_groups"], "state": per_param}
    return tensors, document


def join_optimizer_states(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> dict[str, dict]:
    """Inverse of `split_optimizer_states`."""
    states: dict[str, dict] = {}
    for name, part in document.items():
        state = {int(param_id): dict(values) for param_id, values in part["state"].items()}
        states[name] = {"param_groups": part["param_groups"], "state": state}
    for key, value in tensors.items():
        name, param_id, field = key.split(".", 2)
        states[name]["state"][int(param_id)][field] = value
    return states


def check_same_config(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    """Resuming with other settings would not continue the same run: name the differences."""
    saved = json.loads(json.dumps(saved))
    current = json.loads(json.dumps(current))
    for machine_setting in ("device", "num_threads"):  # where it runs, not what it computes
        saved["train"].pop(machine_setting, None)
        current["train"].pop(machine_setting, None)
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    differences = sorted(k for k in set(saved_flat) | set(current_flat) if saved_flat.get(k) != current_flat.get(k))
    if differences:
        raise InputError(f"cannot resume from {directory}: its config differs in {differences}")


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read checkpoint file {path}: {exc}") from exc


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (safetensors: loading runs no code); InputError names a missing or damaged file."""
    try:
        return safetensors.torch.load_file(path)
    except (OSError, safetensors.SafetensorError) as exc:
        raise InputError(f"cannot read checkpoint file {path}: {exc}") from exc
