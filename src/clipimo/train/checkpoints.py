"""What a run folder keeps so a run can stop and continue: checkpoints and the metrics log.

Checkpoints are safetensors (tensors: model, optimizer state, every rank's RNG) plus JSON
metadata, written atomically, never pickled; ``checkpoints/latest.json`` names the newest, and a
damaged newest one falls back to the one before. ``metrics.jsonl`` is cut back to the checkpoint
on resume, so it never holds steps the resumed run will log again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipimoError
from ..utils import fileio
from ..utils.log import logger

CHECKPOINT_FORMAT = "clipimo-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# optimizer and RNG state as tensors + JSON


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as named tensors plus JSON-able metadata (groups, scalar state)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                      prefix: str = "optim.") -> None:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------------------------
# checkpoint files


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    fileio.write_safetensors(path, tensors, "clipimo_checkpoint",
                          {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta})


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = fileio.read_safetensors(path, "clipimo_checkpoint", "training checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ClipimoError(f"{path}: unsupported checkpoint format {meta.get('format')!r} v{meta.get('version')}")
    return tensors, meta


def save_step_checkpoint(out: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         keep: int) -> Path:
    """Write ``checkpoints/step_<step>.safetensors``, point ``latest.json`` at it, and delete all but
    the ``keep`` newest step checkpoints."""
    folder = Path(out) / CHECKPOINT_DIR
    name = f"step_{meta['step']:08d}.safetensors"
    write_checkpoint(folder / name, tensors, meta)
    fileio.write_json(folder / LATEST, {"checkpoint": name, "step": meta["step"], "epoch": meta["epoch"],
                                     "step_in_epoch": meta["step_in_epoch"]})
    for path in sorted(folder.glob("step_*.safetensors"))[:-keep]:
        if path.name != name:
            path.unlink(missing_ok=True)
    return folder / name


def checkpoint_candidates(out: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run, newest first: the one ``latest.json`` names, then the older ones
    (a damaged latest file or pointer then falls back to the previous checkpoint)."""
    folder = Path(out) / CHECKPOINT_DIR
    found = sorted(folder.glob("step_*.safetensors"), reverse=True)
    pointer = folder / LATEST
    try:
        named = folder / fileio.read_json(pointer, "checkpoint pointer")["checkpoint"]
    except (ClipimoError, KeyError, TypeError) as err:
        if pointer.exists():
            logger.warning("%s is unreadable (%s); using the newest checkpoint file instead", pointer, err)
        return found
    return [named] + [p for p in found if p != named]


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest readable checkpoint of a run, or None; skipped damaged ones are reported."""
    candidates = checkpoint_candidates(out)
    for i, path in enumerate(candidates):
        try:
            read_checkpoint(path)
            return path
        except ClipimoError as err:
            nxt = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "none left"
            logger.warning("checkpoint unreadable: %s; %s", err, nxt)
    if candidates:
        raise ClipimoError(f"no readable checkpoint in {Path(out) / CHECKPOINT_DIR}; pass --resume none to start afresh")
    return None


def resume_source(choice: str | None, out: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume`` names: 'auto' (the run's newest, if any), 'none', or a file."""
    choice = (choice or "auto").strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "auto":
        return latest_checkpoint(out)
    return Path(choice)


# ----------------------------------------------------------------------------------------------
# metrics


class MetricsLog:
    """JSONL, one object per logged step; on resume the lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            fileio.write_text(path, "")
        elif path.is_file():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a partial last line (a write cut off by a crash or a full
    disk) is dropped with a warning, a damaged earlier line is an error naming the line."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):
                logger.warning("%s:%d: dropping a partial last line (an interrupted write)", path, n)
                break
            raise ClipimoError(f"{path}:{n}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise ClipimoError(f"{path}:{n}: expected a JSON object, got {line[:60]!r}")
        records.append(record)
    return records
