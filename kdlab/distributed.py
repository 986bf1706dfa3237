"""Data-parallel training under ``torchrun``: the process group, ranks and the collectives the engine uses.

``torchrun --nproc_per_node=N -m kdlab train ...`` starts N processes with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` set; `init` joins them (NCCL on CUDA, each process on GPU ``LOCAL_RANK``; gloo on CPU).
Outside torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every helper is a no-op on one process, so
the engine reads the same either way. Ranks keep identical copies of every trained module: they
start from one seed (and a broadcast from rank 0), average their gradients after each backward
(`all_reduce_grads`) and so take identical optimiser steps.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def requested_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes logs, checkpoints and results and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, CUDA means this process's GPU (``LOCAL_RANK``); anything else is kept."""
    if device.type == "cuda" and requested_world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def init(device: torch.device) -> bool:
    """Join torchrun's process group when there is one to join (True if this call created it)."""
    if requested_world_size() <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=timedelta(minutes=60), **kwargs)  # dataset generation waits here
    return True


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _coalesced(tensors: list[torch.Tensor], reduce) -> None:
    """Apply the in-place collective `reduce` to `tensors` as one flat buffer per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_grads(params) -> None:
    """Average the gradients of `params` over the ranks (what DDP does after backward). Every rank runs
    the same graph, so the parameters without a gradient (left alone, as on one process) are the same."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad and p.grad is not None]
    size = world_size()
    _coalesced([p.grad for p in params], lambda flat: (dist.all_reduce(flat), flat.div_(size)))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (confusion matrices)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` averaged over the ranks, in place (logged loss terms: a NaN on one rank reaches all)."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def broadcast_state(*modules: nn.Module) -> None:
    """Rank 0's parameters and buffers in every rank's copy of `modules`."""
    if not is_distributed():
        return
    tensors = [t.data for m in modules for t in (*m.parameters(), *m.buffers())]
    _coalesced(tensors, lambda flat: dist.broadcast(flat, 0))


def broadcast_buffers(*modules: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, ...) everywhere, as DDP's ``broadcast_buffers``."""
    if not is_distributed():
        return
    tensors = [b.data for m in modules for b in m.buffers()]
    if tensors:
        _coalesced(tensors, lambda flat: dist.broadcast(flat, 0))


def differs_across_ranks(values: torch.Tensor) -> bool:
    """Whether some rank holds other `values` than this one (the same answer on every rank)."""
    if not is_distributed():
        return False
    high, low = values.detach().double().clone(), values.detach().double().clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return not torch.equal(high, low)


def fingerprint(*modules: nn.Module) -> torch.Tensor:
    """One float64 sum per parameter and buffer of `modules`: equal on ranks that hold equal state."""
    tensors = [t.detach() for m in modules for t in (*m.parameters(), *m.buffers())]
    return torch.stack([t.sum(dtype=torch.float64) for t in tensors]) if tensors else torch.zeros(1)


class _SumOverRanks(torch.autograd.Function):
    """A differentiable all-reduce (sum): the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _SumOverRanks.apply(grad.contiguous())


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(tensor)


class SyncBatchNorm(nn.SyncBatchNorm):
    """`torch.nn.SyncBatchNorm`, which runs only on accelerators, plus a CPU (gloo) path: the batch
    mean and variance over every rank's slice through a differentiable all-reduce. Its state dict is
    a BatchNorm's, so checkpoints load into the plain model."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = _sum_over_ranks(torch.tensor(float(input.numel() // input.size(1))))
        mean = _sum_over_ranks(input.sum(dims)) / count
        var = _sum_over_ranks(((input - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * var.detach() * count / max(float(count) - 1, 1.0))
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` synchronised over the ranks (in place where `module` is not itself one)."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = SyncBatchNorm
    return module
