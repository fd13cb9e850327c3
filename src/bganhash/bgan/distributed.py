"""Data-parallel training: where this process stands (`World`) and how it shares a mini-batch (`Shard`).

`Trainer` reaches every process through these two: `World` holds the collectives a run needs (barrier,
broadcasts, the DDP wrapper), and `World.shard(index)` gives the strategy `Trainer.train_step` writes its
losses through. One process is `World()`, where every collective and every `Shard` method is the
identity, so the single-process trainer runs unchanged; `bganhash.bgan.launch` joins a torchrun launch.

How N processes reproduce one process with the same global batch B (`Trainer.train_step`):

- every process draws the same seeded batch order and takes its `Shard` of each batch: a contiguous
  slice of B_r rows (B_r = B/N, give or take one), so the shards in rank order are the batch
  (`Shard.rows`); the encoder, generator and discriminator run on those rows only;
- the encoder (+ hash layer), the generator and the discriminator are each wrapped in
  DistributedDataParallel, whose all-reduce *averages* the N processes' gradients, and their
  BatchNorm layers normalise with the statistics of the global batch (`bganhash.bgan.batchnorm`);
- per-row losses (pixel and perceptual MSE, the GAN losses, the quantisation term) are means over the
  shard, and `Shard.scale` multiplies them by N * B_r / B: B_r / B turns the shard's mean into its
  share of the batch's mean and N undoes DDP's average, so the averaged gradient is the gradient of
  the batch's mean;
- losses over pairs (l_N on the global S) are computed on the whole batch's codes, all-gathered with
  autograd (`Shard.whole_batch`). Every process then computes the same loss; the gather's backward sums
  the N processes' (equal) gradients for this shard's rows, which DDP's average divides by N again: the
  single-process gradient, with every pair of the global batch in l_N, not only pairs within a shard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bganhash._validation import InputError
from bganhash.bgan.batchnorm import sync_batch_norms

# ---- where this process stands ---------------------------------------------------------------------

@dataclass(frozen=True)
class World:
    """This process's place in a training run: `rank` of `size` processes, `local_rank` on its machine.

    World() is a single process: nothing is sharded, gathered or synchronised.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, evaluates and writes files."""
        return self.rank == 0

    def shard(self, index: np.ndarray) -> Shard:
        """This process's part of the global batch `index` (contiguous; the shards in rank order are `index`)."""
        index = np.asarray(index)
        sizes = tuple(len(part) for part in np.array_split(np.arange(len(index)), self.size))
        start = sum(sizes[:self.rank])
        return Shard(index[start:start + sizes[self.rank]], start, sizes, self)

    def check_batches(self, n_rows: int, batch_size: int) -> None:
        """Every shard of every batch of `Trainer.epoch_batches` must hold at least one row."""
        n_batches = max(1, -(-n_rows // batch_size))
        smallest = n_rows // n_batches
        if smallest < self.size:
            raise InputError(
                f"batch_size={batch_size} on {n_rows} training rows gives batches of {smallest} rows, fewer than "
                f"the {self.size} processes (WORLD_SIZE) that share each batch; use a larger batch_size or fewer "
                "processes"
            )

    def check_device(self, device: torch.device) -> None:
        """Under torchrun each process trains on the GPU of its LOCAL_RANK."""
        if not self.is_distributed or device.type != "cuda":
            return
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise InputError(f"LOCAL_RANK={self.local_rank} but this machine has {count} CUDA device(s): start at "
                             f"most {count} processes per node (--nproc_per_node) or train with device='cpu'")
        if device.index is not None and device.index != self.local_rank:
            raise InputError(f"device={str(device)!r} in a distributed run: each process trains on the GPU of its "
                             "LOCAL_RANK, so give device='cuda' without an index")

    # ---- collectives (all identities in one process) -------------------------------------------------

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.is_distributed:
            dist.all_reduce(torch.zeros(1, device=_collective_device()))

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the block first in the first process of every machine (LOCAL_RANK 0, e.g. to fill a
        cache), then in the others."""
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()

    def from_main(self, compute: Callable[[], float]) -> float:
        """`compute()` run on rank 0 only (e.g. an evaluation); every process gets its value."""
        if not self.is_distributed:
            return float(compute())
        value = torch.tensor([float(compute()) if self.is_main else 0.0], dtype=torch.float64,
                             device=_collective_device())
        dist.broadcast(value, src=0)
        return float(value.item())

    def broadcast_state(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (in place)."""
        if self.is_distributed:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    _broadcast_in_place(tensor)

    def broadcast_csr(self, matrix: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
        """Rank 0's sparse boolean matrix on every process (e.g. S, so that all train on one S even where
        their floating point differs); InputError when a process's matrix has another shape."""
        if not self.is_distributed:
            return matrix
        matrix = scipy.sparse.csr_matrix(matrix, dtype=bool, copy=True)
        matrix.eliminate_zeros()  # only the positives travel
        device = _collective_device()
        header = torch.tensor([*matrix.shape, matrix.nnz], dtype=torch.int64, device=device)
        local_shape = tuple(int(v) for v in header[:2].tolist())
        dist.broadcast(header, src=0)
        rows, columns, nnz = (int(v) for v in header.tolist())
        if (rows, columns) != local_shape:
            raise InputError(f"rank {self.rank} has {local_shape[0]} training rows but rank 0 has {rows}: "
                             "every process must train on the same data")
        parts = [torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64))]
        if not self.is_main:
            parts = [torch.empty(rows + 1, dtype=torch.int64), torch.empty(nnz, dtype=torch.int64)]
        received = []
        for part in parts:
            part = part.to(device)
            dist.broadcast(part, src=0)
            received.append(part.cpu().numpy())
        indptr, indices = received
        return scipy.sparse.csr_matrix((np.ones(nnz, dtype=bool), indices, indptr), shape=(rows, columns))

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """`module` for data-parallel training: its BatchNorm layers synchronised (in place, same
        parameters and buffers) and the whole in DistributedDataParallel; `module` itself in one process.
        `find_unused_parameters`: some parameters take no part in the forward (DDP then looks for them)."""
        if not self.is_distributed:
            return module
        sync_batch_norms(module)
        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused_parameters)



@dataclass(frozen=True)
class Shard:
    """One process's rows of a global mini-batch, and how terms computed on them make the batch's:
    the sharding strategy of `Trainer.train_step`. `rows` (training row ids) sit at `start` in the
    batch, whose shards have `sizes` rows in rank order. In one process `rows` is the whole batch and
    every method returns its argument."""

    rows: np.ndarray
    start: int
    sizes: tuple[int, ...]
    world: World

    @property
    def batch_size(self) -> int:
        return sum(self.sizes)

    @property
    def weight(self) -> float:
        """N * B_r / B: multiplies a mean over this shard's rows so that DDP's gradient average gives
        the gradient of the mean over the global batch (1 in one process)."""
        return self.world.size * len(self.rows) / self.batch_size

    def whole_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """The global batch's rows on every process, from each process's `tensor` of its shard's rows
        (for terms over pairs of rows, and whole-batch statistics); differentiable: the backward gives
        each shard the sum of every process's gradient for its rows."""
        if not self.world.is_distributed:
            return tensor
        return _GatherShards.apply(tensor, self.sizes, self.world.rank)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """A mean over this shard's rows -> this process's term of the batch mean's gradient (`weight` times it)."""
        if not self.world.is_distributed:
            return loss
        return self.weight * loss

    def batch_means(self, values: dict[str, float]) -> dict[str, float]:
        """Means over this shard's rows -> the means over the global batch (the same on every process)."""
        if not self.world.is_distributed:
            return values
        shares = torch.tensor([v * len(self.rows) / self.batch_size for v in values.values()],
                              dtype=torch.float64, device=_collective_device())
        dist.all_reduce(shares)
        return dict(zip(values, shares.tolist()))


class _GatherShards(torch.autograd.Function):
    """All-gather of shards of unequal sizes (padded to the largest for the collective), whose backward
    sums every process's gradient of the gathered batch and keeps this shard's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = sum(ctx.sizes[:ctx.rank])
        return total[start:start + ctx.sizes[ctx.rank]], None, None



def current_world() -> World:
    """Where this process stands: from the initialised default process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def _collective_device() -> torch.device:
    """Where small bookkeeping tensors go: CPU (gloo), unless the group speaks NCCL only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_in_place(tensor: torch.Tensor) -> None:
    """Rank 0's values into `tensor` (through the GPU when the group speaks NCCL only)."""
    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        buffer = tensor.to(_collective_device())
        dist.broadcast(buffer, src=0)
        tensor.copy_(buffer)
    else:
        dist.broadcast(tensor, src=0)
