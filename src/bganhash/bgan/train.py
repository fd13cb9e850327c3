"""The BGAN training loop (Section 3.4): one plain loop with separate discriminator, generator and
encoder steps, beta raised stage by stage, a checkpoint at the end of every stage.

Per mini-batch: the encoder and hash layer give z and the relaxed codes b = act(beta z); the generator
reconstructs I^R = G(b); the discriminator ascends Eq. 14 on (I, I^R.detach()) (Eq. 20); then the
encoder and W_h descend l_N + lambda1 l_C (+ the quantisation term) (Eq. 18, 21) and the generator
descends lambda1 l_C + lambda2 l_A (Eq. 19), both from one forward pass.

Under torchrun each process trains on its shard of every mini-batch and the result equals one process
with the same global batch: `train_step` computes its terms through the `Shard` strategy of
`bganhash.bgan.distributed` (where the maths is explained), the identity in one process.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import nn

from bganhash._progress import progress_bar
from bganhash._system import torch_threads
from bganhash._validation import InputError
from bganhash.bgan.checkpoint import has_checkpoint, load_checkpoint, no_checkpoint_message, save_checkpoint
from bganhash.bgan.config import BGANConfig
from bganhash.bgan.distributed import Shard, World, current_world
from bganhash.bgan.losses import (
    adversarial_objective,
    bit_spread_loss,
    content_loss,
    discriminator_loss,
    generator_adversarial_loss,
    neighborhood_loss,
    quantization_loss,
)
from bganhash.bgan.model import BGANNetworks, FinetuneEncoder, relax_sign


@dataclass
class TrainingData:
    """What one training run reads: encoder inputs, reconstruction targets, and S's positives."""

    inputs: torch.Tensor  # (n, D) features for the head encoder, or (n, 3, s, s) images in [-1, 1]
    images: torch.Tensor | None  # (n, 3, s, s) reconstruction targets in [-1, 1]; None without l_C / l_A
    similarity: scipy.sparse.csr_matrix  # (n, n) bool, the positives of S

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def similarity_block(self, index: np.ndarray, device: torch.device, cosine_weight: float = 0.0,
                         positive_target: float = 1.0, negative_target: float = -1.0) -> torch.Tensor:
        """l_N's targets on the batch: S as a dense (B, B) float tensor of `positive_target` /
        `negative_target` (LossConfig's, 1 / -1 in the paper), blended with the inputs' cosine similarity
        when `cosine_weight` > 0 (LossConfig.cosine_target_weight)."""
        block = self.similarity[index][:, index].toarray()
        target = torch.from_numpy(np.where(block, positive_target, negative_target).astype(np.float32))
        if cosine_weight > 0:
            if self.inputs.ndim != 2:
                raise InputError("cosine_target_weight needs feature inputs (encoder='head'), not images")
            unit = F.normalize(self.inputs[torch.from_numpy(np.asarray(index))].float(), dim=1)
            target = (1.0 - cosine_weight) * target + cosine_weight * (unit @ unit.T)
        return target.to(device)


def make_optimizer(parameters: list[nn.Parameter], config: BGANConfig) -> torch.optim.Optimizer:
    """The configured optimiser; Adam in its fused form (one kernel for all parameters, not a loop of
    small ops: about a tenth of a CPU training step) where the device supports it."""
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    fused = torch.device(train.device).type in ("cpu", "cuda")
    return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay, fused=fused)


def bit_balance(z: torch.Tensor) -> float:
    """1 when every bit is +1 on half of the batch, 0 when every bit is constant."""
    positive = (z >= 0).float().mean(dim=0)
    return (2 * torch.minimum(positive, 1 - positive)).mean().item()


class TrainingDiverged(InputError):
    """A loss became NaN or infinite: the settings (learning rate, loss weights) do not train on this data."""


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
        self.discriminate = None
        # the parameters each optimiser steps: theta + W_h, pi, psi
        self.parameter_groups = {"encoder": [*networks.encoder.parameters(), *networks.hash_layer.parameters()]}
        if networks.generator is not None:
            self.parameter_groups["generator"] = list(networks.generator.parameters())
        if networks.discriminator is not None and config.loss.use_adversarial:
            self.parameter_groups["discriminator"] = list(networks.discriminator.parameters())
            self.discriminate = self.world.wrap(networks.discriminator)
        self.optimizers = {name: make_optimizer(group, config) for name, group in self.parameter_groups.items()}
        self.history: list[dict[str, Any]] = []
        self.next_stage = 0
        self._last_content = 0.0

    # ---- one mini-batch --------------------------------------------------------------------------

    def train_step(self, index: np.ndarray, beta: float) -> dict[str, float]:
        """One update of the discriminator, then of the encoder and the generator, on the training rows
        `index` (the global batch; this process computes the rows of its `shard`)."""
        cfg, shard = self.config.loss, self.world.shard(index)
        z = self.project(self.data.inputs[shard.rows].to(self.device))  # z = W_h^T phi(I) (Eq. 15)
        b = relax_sign(z, beta, cfg.activation)  # app(beta z) (Eq. 5) or tanh(beta z) (Eq. 7)
        stats = {"bit_balance": bit_balance(shard.whole_batch(z.detach()))}
        zero = z.new_zeros(())
        # l_N over every pair of the mini-batch (Eq. 10); the other terms are means over this shard's rows
        targets = self.data.similarity_block(index, self.device, cfg.cosine_target_weight, cfg.positive_target,
                                             cfg.negative_target)
        batch_codes = shard.whole_batch(b) if cfg.use_neighborhood or cfg.bit_spread_weight > 0 else b
        loss_n = neighborhood_loss(batch_codes, targets, cfg.balance_pairs) if cfg.use_neighborhood else zero
        loss_s = bit_spread_loss(batch_codes) if cfg.bit_spread_weight > 0 else zero
        loss_q = quantization_loss(z) if cfg.quantization_weight > 0 else zero
        loss_c, loss_a = zero, zero
        if self.generate is not None:
            real = self.data.images[shard.rows].to(self.device)
            fake = self.generate(b)  # I^R = G(b) (Eq. 16)
            if self.discriminate is not None:
                stats.update(self._discriminator_step(shard, real, fake))
            loss_c, loss_a = self._reconstruction_losses(real, fake)
        stats["loss_n"] = loss_n.item()
        if cfg.bit_spread_weight > 0:
            stats["loss_spread"] = loss_s.item()
        stats.update(shard.batch_means({"loss_q": loss_q.item(), "loss_c": loss_c.item(), "loss_g": loss_a.item()}))
        loss_q, loss_c, loss_a = shard.scale(loss_q), shard.scale(loss_c), shard.scale(loss_a)
        # theta and W_h descend l_N + lambda1 l_C (Eq. 18, 21), plus the authors' quantisation term, and,
        # with adversarial_reaches_encoder (the authors' code), lambda2 l_A through the generator
        encoder_loss = loss_n + cfg.bit_spread_weight * loss_s + cfg.lambda_content * loss_c + \
            cfg.quantization_weight * loss_q
        if cfg.adversarial_reaches_encoder:
            encoder_loss = encoder_loss + cfg.lambda_adversarial * loss_a
        self._descend("encoder", encoder_loss, keep_graph=True)  # the generator's step below walks the same graph
        if self.generate is not None:
            # pi descends lambda1 l_C + lambda2 l_A (Eq. 19)
            self._descend("generator", cfg.lambda_content * loss_c + cfg.lambda_adversarial * loss_a)
        return stats

    def _discriminator_step(self, shard: Shard, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """psi ascends l_A (Eq. 20: descends Eq. 14's binary cross-entropy form) on the real images and
        the detached reconstructions; returns l_A and the mean D(I), D(I^R) of the batch."""
        real_logits = self.discriminate(real)
        fake_logits = self.discriminate(fake.detach())
        self._descend("discriminator", shard.scale(discriminator_loss(real_logits, fake_logits)))
        with torch.no_grad():
            return shard.batch_means({
                "loss_a": adversarial_objective(real_logits, fake_logits).item(),
                "d_real": torch.sigmoid(real_logits).mean().item(),
                "d_fake": torch.sigmoid(fake_logits).mean().item(),
            })

    def _reconstruction_losses(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """l_C (pixel + perceptual MSE, Eq. 11-13) and the generator's adversarial term, as configured."""
        loss_cfg, disc = self.config.loss, self.networks.discriminator
        zero = fake.new_zeros(())
        phi_fake, fake_logits, phi_real = None, None, None
        if disc is not None:
            fake_logits, phi_fake = disc.logits_and_features(fake)
            if loss_cfg.use_content and loss_cfg.perceptual_weight > 0:
                with torch.no_grad():
                    phi_real = disc.features(real)
        loss_c = content_loss(real, fake, phi_real, phi_fake, loss_cfg.perceptual_weight,
                              loss_cfg.relative_perceptual) \
            if loss_cfg.use_content else zero
        loss_a = generator_adversarial_loss(fake_logits) if loss_cfg.use_adversarial else zero
        return loss_c, loss_a

    def _descend(self, name: str, loss: torch.Tensor, keep_graph: bool = False) -> None:
        """One step of optimiser `name` down the gradient of `loss` w.r.t. its own parameters only (none
        when no term is on). `keep_graph`: a later step walks the same graph; stepping these parameters
        does not disturb it, as that step reaches only other networks' parts of it."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward(inputs=self.parameter_groups[name], retain_graph=keep_graph)
            optimizer.step()

    # ---- the loop ----------------------------------------------------------------------------------

    def epoch_batches(self, stage: int, epoch: int) -> list[np.ndarray]:
        """The epoch's shuffled batches, seeded by (seed, stage, epoch) so a resumed run sees the same."""
        rng = np.random.default_rng([self.config.train.seed, stage, epoch])
        n = len(self.data)
        return np.array_split(rng.permutation(n), max(1, math.ceil(n / self.config.train.batch_size)))

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train every remaining stage; returns the per-epoch history."""
        if resume and has_checkpoint(self.checkpoint_dir):
            self.load_checkpoint(self.checkpoint_dir)
        elif resume and self.checkpoint_dir is not None and self.world.is_main:
            warnings.warn(no_checkpoint_message(self.checkpoint_dir), stacklevel=2)
        train = self.config.train
        n_stages, steps_per_epoch = len(train.beta_schedule), len(self.epoch_batches(0, 0))
        total = n_stages * train.epochs_per_stage * steps_per_epoch
        done = self.next_stage * train.epochs_per_stage * steps_per_epoch
        self.networks.train()
        bar = progress_bar(total, "BGAN", "step", enabled=self.progress, initial=done)
        with torch_threads(train.num_threads), bar:
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

    def _run_epoch(self, stage: int, epoch: int, bar: Any) -> dict[str, Any]:
        beta = self.config.train.beta_schedule[stage]
        started = time.perf_counter()
        totals: dict[str, float] = {}
        batches = self.epoch_batches(stage, epoch)
        for step, index in enumerate(batches):
            stats = self.train_step(index, beta)
            self._check_finite(stats, stage, epoch, step)
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

    def _check_finite(self, stats: dict[str, float], stage: int, epoch: int, step: int) -> None:
        """Stop at the first non-finite loss: the weights are then NaN, and every later step and the codes
        with them (measured: one code for every image). The last stage's checkpoint stays as it was."""
        bad = {key: value for key, value in stats.items() if not math.isfinite(value)}
        if bad:
            shown = ", ".join(f"{key}={value}" for key, value in bad.items())
            raise TrainingDiverged(
                f"BGAN training diverged at beta stage {stage + 1}, epoch {epoch + 1}, step {step + 1}: {shown} "
                f"(loss_c was {self._last_content:.3g} a step before). Lower lr, or set relative_perceptual=true "
                "when the content loss grew first")
        self._last_content = stats.get("loss_c", 0.0)

    # ---- checkpoints (`bganhash.bgan.checkpoint`) --------------------------------------------------

    def save_checkpoint(self, directory: Path) -> None:
        """This run's state after `next_stage` stages, to `directory`."""
        save_checkpoint(directory, self.networks, self.optimizers, self.config, self.history, self.next_stage)

    def load_checkpoint(self, directory: Path) -> None:
        """Continue from `directory`: its config must match this run's (machine settings aside)."""
        self.history, self.next_stage = load_checkpoint(directory, self.networks, self.optimizers, self.config)
