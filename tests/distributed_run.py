"""A tiny BGAN training run for tests/test_distributed.py: one process of a torchrun launch.

    torchrun --standalone --nproc_per_node=2 tests/distributed_run.py OUT [--checkpoints DIR] [--resume]
        [--stop-at-stage K]

The problem (`tiny_problem`, `tiny_config`) is shared with the test's single-process reference run.
Every rank writes its final weights to OUT/weights-rank{R}.safetensors; rank 0 also writes the final
z of every training row (OUT/z.safetensors) and the history (OUT/history.json). Each call of
`Trainer.save_checkpoint` is logged to OUT/saved-by-rank{R}.txt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import safetensors.torch
import scipy.sparse as sp
import torch

from bganhash.bgan.config import BGANConfig, make_config
from bganhash.bgan.model import BGANNetworks
from bganhash.bgan.train import Trainer, TrainingData

N, D, CLASSES, IMAGE = 50, 10, 4, 8


def tiny_problem(seed: int = 0) -> TrainingData:
    """50 rows in 4 clusters, random 8x8 images, S from the clusters. With the global batch of 16 the
    epoch's batches have 13, 13, 12 and 12 rows: uneven shards (7 + 6) on two processes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % CLASSES
    features = (rng.standard_normal((CLASSES, D))[labels] * 3 + rng.standard_normal((N, D))).astype(np.float32)
    images = torch.rand(N, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return TrainingData(torch.from_numpy(features), images, sp.csr_matrix(labels[:, None] == labels[None, :]))


def tiny_config() -> BGANConfig:
    """Every loss on (neighborhood, quantisation, pixel + perceptual content, adversarial), two beta stages."""
    return make_config("cpu", 8, batch_size=16, epochs_per_stage=2, beta_schedule=(1.0, 2.0), head_hidden=(16,),
                       width_factor=1 / 16, discriminator_dense=64, lambda_content=0.1, lambda_adversarial=0.1)


def build_trainer(config: BGANConfig, data: TrainingData, checkpoints: Path | None = None) -> Trainer:
    torch.manual_seed(config.train.seed)
    return Trainer(config, BGANNetworks(config, D, IMAGE), data, checkpoint_dir=checkpoints, progress=False)


class Stop(SystemExit):
    """Raised on every rank at the start of a stage, to simulate a run killed after a checkpoint."""


def main() -> None:
    from bganhash.bgan.launch import launched

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-at-stage", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with launched() as world:
        assert world.size == 2, world
        data, config = tiny_problem(), tiny_config()
        trainer = build_trainer(config, data, args.checkpoints)
        save, run_epoch = trainer.save_checkpoint, trainer._run_epoch

        def logged_save(directory: Path) -> None:
            with open(args.out / f"saved-by-rank{world.rank}.txt", "a") as log:
                log.write(f"{directory}\n")
            save(directory)

        def stopping_epoch(stage: int, epoch: int, bar) -> dict:
            if stage == args.stop_at_stage:
                raise Stop(3)
            return run_epoch(stage, epoch, bar)

        trainer.save_checkpoint, trainer._run_epoch = logged_save, stopping_epoch
        history = trainer.fit(resume=args.resume)
        state = {k: v.contiguous() for k, v in trainer.networks.state_dict().items()}
        safetensors.torch.save_file(state, args.out / f"weights-rank{world.rank}.safetensors")
        if world.is_main:
            with torch.no_grad():
                z = trainer.networks.project(data.inputs)
            safetensors.torch.save_file({"z": z}, args.out / "z.safetensors")
            (args.out / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main()
