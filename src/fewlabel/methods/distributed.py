"""Helpers for multi-process (``torch.distributed``) contrastive learning.

Contrastive losses get better with more negatives, so under data parallelism each rank wants the
embeddings of *all* ranks. ``torch.distributed.all_gather`` returns plain copies that cut the autograd
graph; ``gather_with_grad`` keeps it so that the gradient reaching a rank's local embeddings includes
what every other rank's loss says about them.

Everything here degrades to the single-process identity when ``torch.distributed`` is not initialised,
so the same loss code runs on a laptop and on a cluster.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is up (and more than a formality)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without ``torch.distributed``."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without ``torch.distributed``."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sends every rank the summed gradient for its own shard.

    Each rank's loss depends on every shard, so the gradient of the *sum* of the per-rank losses with
    respect to the local shard is the sum, over ranks, of the gradient each rank computed for that shard:
    an ``all_reduce(SUM)`` followed by picking this rank's slice.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, tensor.contiguous())
        return tuple(shards)

    @staticmethod
    def backward(ctx: Any, *shard_grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([g.contiguous() for g in shard_grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping gradients for the local shard.

    Every rank must pass a tensor of the same shape and every rank must run backward (the backward
    pass is itself a collective). Gradient scale: the local shard receives the gradient of the *sum* of
    all ranks' losses; since DDP averages parameter gradients over ranks, a per-rank loss that is the
    mean over local samples yields exactly the gradient of the global-batch mean loss.
    Without ``torch.distributed`` (or with one process) this is the identity.
    """
    if world_size() == 1:
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 without autograd (e.g. keys for a queue)."""
    if world_size() == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(shards, tensor.contiguous())
    return torch.cat(shards, dim=0)


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks (returns a new tensor); identity without ``torch.distributed``."""
    if world_size() == 1:
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / world_size()
