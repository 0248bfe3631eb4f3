"""Who am I in the job: rank / world size from torch.distributed (Ray Train sets it up), or 1 of 1.

The engine never imports Ray: whoever starts the workers (Ray Train, torchrun, a test)
initialises the process group; without one, training runs as a single worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class World:
    """This worker's place: ``rank`` of ``size`` workers, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.size}")

    @classmethod
    def current(cls) -> World:
        """From the initialised process group (LOCAL_RANK from the environment), else 0 of 1."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def gather_objects(obj: Any) -> list[Any]:
    """Every worker's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_across_workers(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of a tensor over all workers (identity with one worker)."""
    if not is_distributed():
        return values
    backend_device = values.device
    if dist.get_backend() == "nccl" and backend_device.type != "cuda":
        values = values.cuda()
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / dist.get_world_size()).to(backend_device)


def any_worker(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on some worker (for agreeing to stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
