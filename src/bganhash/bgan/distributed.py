"""Distributed data-parallel training with PyTorch's own engine: the process-group plumbing.

`torchrun --nproc_per_node=N -m bganhash train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `launched()` joins the process group
they describe (gloo for CPU tensors, plus NCCL for CUDA tensors where there are GPUs) and leaves it at
the end; `current_world()` tells the trainer where this process stands. One process is the world of
size 1, where every helper here is the identity, so the single-process trainer runs unchanged.

How N processes reproduce one process with the same global batch B (`Trainer.train_step`):

- every process draws the same seeded batch order and takes its `Shard` of each batch: a contiguous
  slice of B_r rows (B_r = B/N, give or take one), so the shards in rank order are the batch;
- the encoder (+ hash layer), the generator and the discriminator are each wrapped in
  DistributedDataParallel, whose all-reduce *averages* the N processes' gradients, and their
  BatchNorm layers normalise with the statistics of the global batch (torch's SyncBatchNorm on GPUs,
  `GlobalBatchNorm` on CPU);
- per-row losses (pixel and perceptual MSE, the GAN losses) are means over the shard, weighted by
  `Shard.weight` = N * B_r / B: B_r / B turns the shard's mean into its share of the batch's mean and
  N undoes DDP's average, so the averaged gradient is the gradient of the batch's mean;
- losses over pairs or the whole batch (l_N on the global S, the quantisation term, bit balance)
  are computed on the whole batch's z, all-gathered with autograd (`Shard.gather`). Every process
  then computes the same loss; the gather's backward sums the N processes' (equal) gradients for
  this shard's rows, which DDP's average divides by N again: the single-process gradient, with every
  pair of the global batch in l_N, not only pairs within a shard.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import scipy.sparse
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bganhash._validation import InputError

# torchrun sets all of these; RANK, WORLD_SIZE or LOCAL_RANK in the environment means "launched".
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_TRIGGERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


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
    """One process's rows of a global batch: `rows` (training row ids) sit at `start` in the batch, whose
    shards have `sizes` rows in rank order."""

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

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The global batch's rows on every process, from each process's `tensor` of its shard's rows;
        differentiable: the backward gives each shard the sum of every process's gradient for its rows."""
        if not self.world.is_distributed:
            return tensor
        return _GatherShards.apply(tensor, self.sizes, self.world.rank)

    def own(self, batch: torch.Tensor) -> torch.Tensor:
        """This shard's rows of a whole-batch tensor (differentiable)."""
        if not self.world.is_distributed:
            return batch
        return batch[self.start:self.start + len(self.rows)]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
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


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients too: every process's output depends on every
    process's input."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


# ---- synchronised batch normalisation --------------------------------------------------------------

class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch for CPU tensors (torch's SyncBatchNorm, and DDP's
    support for it, are GPU-only). The sums behind the batch mean and the (biased) variance are
    all-reduced with autograd, so the backward also runs through the other processes' rows; in eval
    mode, or in one process, it is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (batch, channels, ...); got {input.dim()}")

    @classmethod
    def from_batch_norm(cls, layer: nn.modules.batchnorm._BatchNorm) -> GlobalBatchNorm:
        """A synchronised copy of `layer` that shares its parameters and buffers."""
        synced = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
        if layer.affine:
            synced.weight, synced.bias = layer.weight, layer.bias
        if layer.track_running_stats:
            synced.running_mean, synced.running_var = layer.running_mean, layer.running_var
            synced.num_batches_tracked = layer.num_batches_tracked
        synced.train(layer.training)
        return synced

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_full((1,), input.numel() / input.shape[1])
        totals = _SumOverProcesses.apply(torch.cat([input.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = input - mean.view(shape)
        variance = _SumOverProcesses.apply((centred * centred).sum(dims)) / n
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # the running variance is unbiased, as nn.BatchNorm's
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(variance.detach() * (n / (n - 1).clamp(min=1)), alpha=factor)
        return output


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer inside `module` by one normalising over the global batch and
    sharing its parameters and buffers: torch's SyncBatchNorm on GPUs, `GlobalBatchNorm` on CPU. In
    place, so the state dict keeps its keys; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm)):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            on_gpu = child.weight is not None and child.weight.device.type != "cpu"
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child) if on_gpu
                    else GlobalBatchNorm.from_batch_norm(child))
        else:
            sync_batch_norms(child)
    return module


# ---- joining and leaving -------------------------------------------------------------------------------

def read_launch_environment(environ: Mapping[str, str] | None = None) -> World:
    """The World that torchrun's environment variables describe (World() when none is set); InputError
    names what is missing or inconsistent."""
    environ = os.environ if environ is None else environ
    if not any(environ.get(name, "").strip() for name in _TRIGGERS):
        return World()
    missing = [name for name in LAUNCH_VARIABLES if not environ.get(name, "").strip()]
    if missing:
        present = [name for name in LAUNCH_VARIABLES if name not in missing]
        raise InputError(f"incomplete distributed launch: {', '.join(present)} set but {', '.join(missing)} not; "
                         "launch with torchrun, which sets them all, or unset them to train in one process")
    rank, size, local_rank, port = (_int_variable(environ, name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                              "MASTER_PORT"))
    if size < 1:
        raise InputError(f"WORLD_SIZE={size} must be at least 1")
    if not 0 <= rank < size:
        raise InputError(f"RANK={rank} must be between 0 and WORLD_SIZE-1={size - 1}")
    if not 1 <= port <= 65535:
        raise InputError(f"MASTER_PORT={port} must be a TCP port between 1 and 65535")
    local_size = _int_variable(environ, "LOCAL_WORLD_SIZE") if environ.get("LOCAL_WORLD_SIZE", "").strip() else size
    if not 1 <= local_size <= size:
        raise InputError(f"LOCAL_WORLD_SIZE={local_size} must be between 1 and WORLD_SIZE={size}")
    if not 0 <= local_rank < local_size:
        raise InputError(f"LOCAL_RANK={local_rank} must be between 0 and LOCAL_WORLD_SIZE-1={local_size - 1}")
    return World(rank, size, local_rank)


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name, "").strip()
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"${name}={raw!r} must be a whole number (as torchrun sets it)") from None


def init_from_environment(environ: Mapping[str, str] | None = None) -> World:
    """Join the process group of a torchrun launch (nothing to join for one process) and return this
    process's World. With GPUs, CUDA tensors travel over NCCL and this process's default GPU becomes
    the one of its LOCAL_RANK; CPU tensors always travel over gloo."""
    world = read_launch_environment(environ)
    if not world.is_distributed:
        return world
    if dist.is_initialized():
        joined = current_world()
        if (joined.rank, joined.size) != (world.rank, world.size):
            raise InputError(f"a process group of rank {joined.rank} of {joined.size} is already initialised, but "
                             f"the environment says RANK={world.rank}, WORLD_SIZE={world.size}")
        return joined
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if world.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size)
    return world


def current_world() -> World:
    """Where this process stands: from the initialised default process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


@contextlib.contextmanager
def launched(environ: Mapping[str, str] | None = None) -> Iterator[World]:
    """Join torchrun's process group for the block, and destroy it at the end (if we created it).

    After a block that every rank finished, the ranks meet at a barrier before the group is destroyed:
    a rank that tore down gloo's connections while another was still sending made that one abort
    ("terminate called without an active exception") in 2 of 12 runs of the two-process tests.
    """
    created = not (dist.is_available() and dist.is_initialized())
    world = init_from_environment(environ)
    try:
        yield world
        if created and dist.is_initialized():
            dist.barrier()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


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
