"""The process side of training: one process, or one per GPU under torchrun with DDP.

Kept apart from the loop so the loop reads as the algorithm: it calls these helpers and never
touches ``torch.distributed`` itself. Every helper is a no-op (or the identity) in one process.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..utils.distributed import DistEnv


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of ``t`` over processes (``t`` itself in one process)."""
    if env.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= env.world_size
    return t


def any_rank(flag: bool, env: DistEnv) -> bool:
    """Whether any process has ``flag`` set, so all of them stop (and checkpoint) at the same step."""
    if not env.distributed:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` under DDP when there are several processes; frozen tensors are left out of the
    gradient all-reduce and buffers are not broadcast (each rank keeps its own, e.g. DINO's center)."""
    if not env.distributed:
        return module
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    return DistributedDataParallel(
        module,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def default_workers(device: torch.device, world_size: int) -> int:
    """DataLoader workers per process: none on CPU (the model needs the cores), else up to 8 per GPU."""
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 1) // max(world_size, 1)
    return max(0, min(8, per_process - 1))


@contextlib.contextmanager
def sigterm_requests() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the block runs (a scheduler's stop request), so the loop can
    checkpoint at the next step; the previous handler is restored on exit. Off the main thread,
    where handlers cannot be installed, the event is never set."""
    requested = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
    try:
        yield requested
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
