"""This process's place in a torchrun job (rank, world size, device), shared by training and feature
extraction. One process (no ``WORLD_SIZE`` > 1 in the environment) is the default and needs nothing."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import ClipimoError
from .device import resolve_device

T = TypeVar("T")


@dataclass
class DistEnv:
    """This process's place in the run: rank, world size, device (one GPU per process under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def cleanup(self) -> None:
        """Leave the process group this env joined. The process then works alone (``distributed`` is
        False, so no later step waits on a group that is gone) and keeps its rank, so ``is_main``
        still says whether it is the one that writes the output."""
        if self.owns_group:
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False
            self.world_size = 1


def setup_distributed(device: str = "auto") -> DistEnv:
    """One process, or (when ``WORLD_SIZE`` > 1, as torchrun sets it) join the process group:
    nccl for CUDA, gloo for CPU; under torchrun each process takes GPU ``LOCAL_RANK``."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev.index or 0)
        return DistEnv(device=dev)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
        owns = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ClipimoError("process group does not match WORLD_SIZE/RANK")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def run_sharded(n: int, work: Callable[[int], T], env: DistEnv | None) -> list[T]:
    """``[work(0), ..., work(n-1)]`` where ``work`` caches its result on a shared disk: under torchrun
    each rank first runs its own indices (i % world == rank), all wait, then every index is run in
    order, now from the cache. The result is what one process computes (same shards, same order);
    a cache not shared between ranks only costs time, never correctness."""
    if env is not None and env.distributed:
        for i in range(env.rank, n, env.world_size):
            work(i)
        env.barrier()
    return [work(i) for i in range(n)]
