"""Several processes, one training run: the ``torchrun`` helpers (notebook 04, section 3).

``torchrun --nproc_per_node=N -m cxrkit train ...`` starts N copies of the same
program; each joins the process group (:func:`setup_distributed`), trains on its
own shard of the images, and rank 0 alone validates and writes files. The few
collective operations the loops need live here: :func:`barrier`,
:func:`broadcast_flag` (rank 0 decides, e.g. "the time is up") and
:func:`any_rank` (one rank's problem, e.g. a NaN loss, stops every rank: a rank
that raised alone would leave the others waiting forever in backward's all-reduce).
Without ``torchrun`` every helper is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "dist_info",
    "setup_distributed",
    "cleanup_distributed",
    "barrier",
    "broadcast_flag",
    "any_rank",
    "gather_objects",
    "unwrap",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """This process's rank and world size (from ``torch.distributed`` once initialised)."""
    if _initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def setup_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes with RANK/WORLD_SIZE/LOCAL_RANK.

    NCCL when a GPU is available (one GPU per process, ``cuda:LOCAL_RANK``), gloo
    on CPU. Without those variables (a plain ``python -m cxrkit train``), nothing
    happens and the run is single-process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", init_method="env://")
        else:
            dist.init_process_group("gloo", init_method="env://")
    return dist_info()


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group that :func:`setup_distributed` joined (after a barrier)."""
    if info.enabled and _initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if _initialized():
        dist.barrier()


def _flag_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. "stop now, the time is up"), shared with every rank."""
    if not _initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=_flag_device(device))
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's number (e.g. the epochs a time budget allows), shared with every rank."""
    if not _initialized():
        return int(value)
    t = torch.tensor([int(value)], device=_flag_device(device))
    dist.broadcast(t, src=0)
    return int(t.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on at least one (an all-reduce with MAX).

    Every rank must call it at the same point; the training loop calls it once per
    iteration with "my loss is not finite", before backward.
    """
    if not _initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=_flag_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` in a single process).

    For rare, small messages (e.g. which rank saw a NaN and on which images).
    """
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model
