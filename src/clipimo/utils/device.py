"""One reading of a ``--device`` value for every command."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import ClipimoError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise a torch device that must exist here."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ClipimoError(f"bad --device {device!r}: expected auto, cpu or cuda[:index] ({err})") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ClipimoError(f"--device {device}: clipimo computes on cpu, cuda[:index] or mps, not on {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClipimoError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ClipimoError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ClipimoError(f"--device {device}: MPS is not available on this machine (use --device cpu)")
    return dev


@contextmanager
def full_float32() -> Iterator[None]:
    """Plain float32 matrix products inside (no TF32 on the GPU, whatever a caller set): a search on
    the GPU then rounds like float32 on the CPU and makes the same choices."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
