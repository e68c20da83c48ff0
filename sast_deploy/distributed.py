"""Devices and ranks: one process, or several under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK).

Training splits each global minibatch over the ranks; compare spreads its samples over them.
Only rank 0 writes files and prints results.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch

from .errors import RunError


def resolve_device(name: str) -> torch.device:
    """The torch device of ``training.device`` (cpu, cuda or auto); under torchrun, this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RunError("training.device = cuda, but no CUDA device is available (use cpu or auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def distributed_context(device: torch.device) -> Tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the process group is created here:
    gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_bounds(n: int, rank: int, world: int) -> Tuple[int, int]:
    """[lo, hi) of this rank's contiguous part of n items: equal parts of ceil(n / world), the
    last ones short or empty."""
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per)


def rank_slice(global_batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of a global minibatch (equal parts; the last global batch may be short)."""
    lo, hi = rank_bounds(len(global_batch), rank, world)
    return global_batch[lo:hi]


def is_rank_zero() -> bool:
    """Rank 0 under torchrun (RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0
