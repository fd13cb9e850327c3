"""Feature extraction across the processes of a torchrun launch: each rank extracts a contiguous run of
whole batches and the ranks gather the rows, so every rank ends with what one process computes alone
(the same batches go through the same engine, so the rows are identical, not merely close)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


def process_group() -> tuple[int, int]:
    """(rank, world size) of the torch process group this process has joined; (0, 1) when none."""
    distributed = sys.modules.get("torch.distributed")  # no process group can exist before torch is imported
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return 0, 1
    return distributed.get_rank(), distributed.get_world_size()


def is_main_process() -> bool:
    """True outside a launch, and on rank 0 within one: the process that writes files and prints."""
    return process_group()[0] == 0


def shard_rows(n_rows: int, batch_size: int, rank: int, size: int) -> slice:
    """The rows rank `rank` of `size` extracts: whole batches, as evenly shared as whole batches allow."""
    n_batches = -(-n_rows // batch_size)
    first, last = (n_batches * rank) // size, (n_batches * (rank + 1)) // size
    return slice(min(first * batch_size, n_rows), min(last * batch_size, n_rows))


def sharded(compute: Callable[[np.ndarray], np.ndarray], wanted: np.ndarray, batch_size: int) -> np.ndarray:
    """`compute(wanted)` computed by the launch's ranks together: rank r computes its `shard_rows`, then
    every rank receives all rows (gloo all_gather); outside a launch, just `compute(wanted)`."""
    rank, size = process_group()
    if size == 1:
        return compute(wanted)
    import torch
    import torch.distributed as dist

    shards = [shard_rows(len(wanted), batch_size, r, size) for r in range(size)]
    mine = shards[rank]
    local = compute(wanted[mine]) if mine.stop > mine.start else None
    width = torch.tensor([0 if local is None else local.shape[1]], dtype=torch.int64)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    longest = max(s.stop - s.start for s in shards)
    padded = torch.zeros((longest, int(width)), dtype=torch.float32)
    if local is not None:
        padded[: len(local)] = torch.from_numpy(local)
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    return np.concatenate([part[: s.stop - s.start].numpy() for part, s in zip(gathered, shards)])
