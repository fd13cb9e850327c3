"""Batch normalisation over the global batch of a data-parallel run: the mini-batch statistics of one
process equal those of one process with the whole batch (torch's SyncBatchNorm on GPUs, `GlobalBatchNorm`
on CPU, where torch has none)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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
        centered = input - mean.view(shape)
        variance = _SumOverProcesses.apply((centered * centered).sum(dims)) / n
        output = centered * torch.rsqrt(variance + self.eps).view(shape)
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

