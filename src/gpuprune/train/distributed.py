"""Data-parallel helpers over torch.distributed (torchrun sets the environment).

``setup()`` joins the process group when ``WORLD_SIZE > 1`` (nccl on GPU, gloo on CPU); with
one process everything here is a cheap no-op, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group if torchrun started several processes; return this rank's info."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def info() -> DistInfo:
    """This process's rank info (single process when no group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (identity on one process)."""
    if not info().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to all ranks (after a re-prune)."""
    if not info().enabled:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group once every rank got here.

    Tearing gloo down while a peer is still working can abort that peer (SIGABRT at exit), so
    ranks meet first; a peer that died does not make this hang (bounded wait, then tear down).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=120))
        else:
            dist.barrier()
    except RuntimeError:  # a rank failed: its error is what the user needs, not this one
        pass
    dist.destroy_process_group()
