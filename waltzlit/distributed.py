"""The two collective facts the rollout and the update need under data parallelism."""

from __future__ import annotations

import torch


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def max_over_ranks(value: int) -> int:
    """The largest ``value`` any process holds (``value`` itself on one process).

    Used wherever all ranks must take the same branch: sharded forward passes and gradient
    all-reduces are collectives, so a rank that skipped one would leave the others waiting.
    """
    if world_size() == 1:
        return value
    on_gpu = torch.distributed.get_backend() == "nccl"  # nccl reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.tensor([value], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())
