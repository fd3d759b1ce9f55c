"""Training configurations: dataclasses holding the paper's defaults (docs/methods.md, "Adapter training").

Precedence, lowest to highest: dataclass defaults, a YAML file (``--config``), command-line flags.
YAML keys are the field names (``batch_size`` or ``batch-size``); unknown keys are an error.
Every field becomes a flag ``--field-name`` through ``add_config_flags``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClipimoError
from ..utils import fileio
from ..utils.log import logger

# Fields that may change between a run and its resumption (they do not alter the trajectory).
RUN_CONTROL_FIELDS = frozenset({
    "data", "out", "device", "workers", "checkpoint_every", "keep_checkpoints", "max_steps",
    "log_every", "resume", "export", "progress", "pretrained",
})


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (and optional argparse ``metavar``/``choices``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Settings shared by both training methods."""

    data: str | None = _f(None, "generic training images: a 'path,label' CSV (e.g. from 'clipimo datasets "
                                "openimages') or an ImageFolder tree (<root>/<class>/<images>)")
    out: str = _f("runs/train", "run folder: checkpoints/, metrics.jsonl, config.yaml, adapter.safetensors")
    model: str = _f("ViT-B-16", "open_clip model name or model-config .json")
    pretrained: str | None = _f(None, "pretrained tag (e.g. openai) or weights file; none = random init")
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N; under torchrun the local rank picks the GPU")
    seed: int = _f(0, "seed of initialisation, data order, augmentation and dropout")
    epochs: int = _f(1, "training epochs")
    batch_size: int = _f(128, "images per process and step (global batch = batch_size x processes)")
    lr: float = _f(8e-3, "learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    drop_last: bool = _f(False, "drop the last incomplete global batch of each epoch")
    bottleneck: int = _f(64, "adapter bottleneck width r")
    scale: float = _f(0.03, "adapter output scale s")
    dropout: float = _f(0.1, "adapter dropout (train mode only; recorded in the adapter file)")
    init: str = _f("lora", "adapter init", choices=("lora", "zero"))
    workers: int | None = _f(None, "DataLoader workers per process (default: 0 on CPU, min(8, cores/processes - 1) on GPU)")
    precision: str = _f("fp32", "fp32 (the paper) or bf16 (autocast, faster on GPUs; recorded in the run)",
                        choices=("fp32", "bf16"))
    checkpoint_every: int = _f(200, "write a checkpoint every N steps (and at every epoch end); 0: epoch ends only")
    keep_checkpoints: int = _f(2, "how many step checkpoints to keep")
    max_steps: int | None = _f(None, "stop (with a checkpoint, no export) once this many steps are done; "
                                     "run again to continue")
    log_every: int = _f(10, "metrics.jsonl / progress-bar interval in steps")
    resume: str = _f("auto", "auto: continue from <out>/checkpoints if present; none: start afresh; "
                             "or a checkpoint .safetensors file")
    export: str | None = _f(None, "adapter file to write at the end (default <out>/adapter.safetensors)")
    progress: bool | None = _f(None, "progress bar (rank 0); unset: only when stderr is a terminal")

    method = "base"

    @property
    def export_path(self) -> Path:
        return Path(self.export).expanduser() if self.export else Path(self.out).expanduser() / "adapter.safetensors"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class SupervisedConfig(TrainConfig):
    """Supervised: Linear head on the projected image embedding, CE, AdamW(wd 0.01), lr 8e-3, batch 128, 1 epoch."""

    drop_last: bool = _f(True, "drop the last incomplete global batch of each epoch (as the paper's loader)")

    method = "supervised"


@dataclass
class DinoConfig(TrainConfig):
    """DINO self-distillation, with the paper's (and DINO's) defaults."""

    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(40, "images per process and step (paper: 40 per GPU on 3 GPUs)")
    lr: float = _f(8e-4, "peak learning rate per 256 images of global batch (linear scaling rule)")
    min_lr: float = _f(2e-6, "learning rate at the end of the cosine schedule")
    warmup_epochs: float = _f(2, "linear learning-rate warm-up epochs")
    weight_decay: float = _f(0.04, "weight decay at the start of its cosine schedule (not on biases / 1-D tensors)")
    weight_decay_end: float = _f(0.4, "weight decay at the end of its cosine schedule")
    clip_grad: float = _f(0.3, "gradient-norm clip; 0 disables")
    clip_mode: str = _f("param", "param: each tensor's norm clipped separately (DINO's clip_gradients, the "
                                 "original code); global: torch clip_grad_norm_ over all", choices=("param", "global"))
    drop_last: bool = _f(True, "drop the last incomplete global batch of each epoch")
    scale: float = _f(0.1, "adapter output scale s")
    dropout: float = _f(0.0, "adapter dropout: 0 because the paper's DINO student never entered train mode, "
                             "so its adapter dropout never fired")
    momentum_teacher: float = _f(0.9998, "teacher EMA momentum at the start (cosine to 1 per step)")
    teacher_temp: float = _f(0.07, "teacher temperature after warm-up")
    warmup_teacher_temp: float = _f(0.04, "teacher temperature at the start")
    warmup_teacher_temp_epochs: int = _f(3, "teacher temperature linear warm-up epochs")
    student_temp: float = _f(0.1, "student temperature")
    center_momentum: float = _f(0.9, "EMA momentum of the teacher-output center")
    out_dim: int = _f(65536, "DINO head output dimension")
    hidden_dim: int = _f(2048, "DINO head MLP hidden width")
    bottleneck_dim: int = _f(256, "DINO head bottleneck (before the weight-normalised last layer)")
    norm_last_layer: bool = _f(True, "fix the weight-norm gain of the last head layer at 1")
    train_head: bool = _f(False, "train the DINO head too (the paper keeps it at its random init)")
    freeze_last_layer: int = _f(1, "with --train-head: epochs during which the last head layer is not updated")
    global_crops_scale: tuple[float, float] = _f((0.25, 1.0), "RandomResizedCrop scale range of the 2 global crops", metavar=("LO", "HI"))
    local_crops_scale: tuple[float, float] = _f((0.05, 0.25), "RandomResizedCrop scale range of the local crops", metavar=("LO", "HI"))
    local_crops_number: int = _f(10, "number of local crops")
    global_size: int | None = _f(None, "global crop size (default: the backbone's image size, 224 for ViT-B/16)")
    local_size: int | None = _f(None, "local crop size (default: 96 for a 224-px backbone; image_size x 3/7 "
                                      "otherwise, rounded to a whole number of patches unless exact)")

    method = "dino"


CONFIGS: dict[str, type[TrainConfig]] = {"supervised": SupervisedConfig, "dino": DinoConfig}


def _type_info(cls: type, name: str) -> tuple[type, bool, bool]:
    """(scalar type, optional, is_tuple) of a config field."""
    hint = typing.get_type_hints(cls)[name]
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    kind, optional, is_tuple = _type_info(cls, name)
    if value is None or (optional and isinstance(value, str) and value.lower() in {"none", "null", ""}):
        if optional:
            return None
        raise ClipimoError(f"{where}: '{name}' may not be empty")
    try:
        if is_tuple:
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            value = tuple(kind(v) for v in value)
            if len(value) != 2:
                raise ValueError("expected two numbers")
            return value
        if kind is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in {"true", "false", "yes", "no", "1", "0", "on", "off"}:
                    raise ValueError("expected true/false")
                return low in {"true", "yes", "1", "on"}
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ClipimoError(f"{where}: bad value {value!r} for '{name}': {err}") from err


def _check_choices(cls: type, cfg: TrainConfig) -> None:
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ClipimoError(f"'{f.name}' must be one of {choices}, got {getattr(cfg, f.name)!r}")


def make_config(method: str, yaml_path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Defaults of ``method``, then the YAML file, then ``overrides`` (flag values; None means "unset")."""
    if method not in CONFIGS:
        raise ClipimoError(f"unknown training method {method!r}; expected one of {sorted(CONFIGS)}")
    cls = CONFIGS[method]
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if yaml_path:
        raw = fileio.read_yaml_mapping(yaml_path)
        declared = raw.pop("method", method)
        if declared != method:
            raise ClipimoError(f"config file {yaml_path} is for method {declared!r}, not {method!r}")
        sources.append((str(yaml_path), raw))
    sources.append(("arguments", overrides))
    for where, mapping in sources:
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ClipimoError(
                    f"{where}: unknown setting {key!r} for `train {method}`; known: {', '.join(sorted(names))}"
                )
            values[name] = _coerce(cls, name, value, where)
    cfg = cls(**values)
    _check_choices(cls, cfg)
    validate(cfg)
    _warn_unfinished_warmups(cfg)
    return cfg


def _warn_unfinished_warmups(cfg: TrainConfig) -> None:
    """A DINO run shorter than its warm-ups never trains at the peak learning rate or at the final
    teacher temperature: legitimate for a smoke run, a surprise otherwise."""
    if not isinstance(cfg, DinoConfig):
        return
    if cfg.epochs < cfg.warmup_epochs:
        logger.warning("--epochs %s is shorter than the learning-rate warm-up (--warmup-epochs %g): the learning "
                       "rate rises for the whole run and ends at about %.0f%% of its peak",
                       cfg.epochs, cfg.warmup_epochs, 100 * cfg.epochs / cfg.warmup_epochs)
    if cfg.epochs < cfg.warmup_teacher_temp_epochs:
        last = cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * (
            (cfg.epochs - 1) / (cfg.warmup_teacher_temp_epochs - 1))
        logger.warning("--epochs %s is shorter than the teacher-temperature warm-up (--warmup-teacher-temp-epochs "
                       "%s): the teacher temperature ends at %.3g, not --teacher-temp %s",
                       cfg.epochs, cfg.warmup_teacher_temp_epochs, last, cfg.teacher_temp)


def validate(cfg: TrainConfig) -> None:
    positive = ["epochs", "batch_size", "bottleneck", "log_every", "keep_checkpoints"]
    if isinstance(cfg, DinoConfig):
        positive += ["out_dim", "hidden_dim", "bottleneck_dim", "student_temp", "teacher_temp", "warmup_teacher_temp"]
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ClipimoError(f"'{name}' must be positive, got {getattr(cfg, name)}")
    if cfg.lr < 0 or cfg.weight_decay < 0:
        raise ClipimoError("'lr' and 'weight_decay' must not be negative")
    if not 0 <= cfg.dropout < 1:
        raise ClipimoError(f"'dropout' must be in [0, 1), got {cfg.dropout}")
    if cfg.checkpoint_every < 0:
        raise ClipimoError("'checkpoint_every' must be >= 0")
    if cfg.max_steps is not None and cfg.max_steps < 0:
        raise ClipimoError("'max_steps' must be >= 0")
    if isinstance(cfg, DinoConfig):
        if cfg.local_crops_number < 0:
            raise ClipimoError("'local_crops_number' must be >= 0")
        for name in ("global_crops_scale", "local_crops_scale"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi <= 1:
                raise ClipimoError(f"'{name}' must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        if not 0 <= cfg.momentum_teacher <= 1 or not 0 <= cfg.center_momentum <= 1:
            raise ClipimoError("'momentum_teacher' and 'center_momentum' must be in [0, 1]")


def add_config_flags(parser: argparse.ArgumentParser, cls: type[TrainConfig], skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per config field, holding the field's default (shown in --help)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional, is_tuple = _type_info(cls, f.name)
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": f.default, "help": f.metadata.get("help", ""), "dest": f.name}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if is_tuple:
            kw.update(nargs=2, type=kind, metavar=f.metadata.get("metavar"))
        elif optional:
            kw.update(type=str)  # 'none' accepted; coerced in make_config
        else:
            kw.update(type=kind)
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kw)
