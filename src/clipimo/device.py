"""One reading of a ``--device`` value for every command."""
from __future__ import annotations

import torch

from .errors import ClipimoError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise a torch device that must exist here."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ClipimoError(f"bad --device {device!r}: expected auto, cpu or cuda[:index] ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClipimoError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev
