"""The training loop both methods share (``Trainer``) and what a run returns (``TrainResult``).

Laid out like DINO's ``main_dino.py``: build everything, turn every setting that changes during
training into a plain array with one value per optimisation step (``Trainer.make_schedules``),
then one loop over epochs and steps that reads step s's values, sets the optimizer from them,
runs the method's ``train_step``, logs, checkpoints and finally exports the adapters. Processes,
data order and the run folder's files are in ``processes``, ``data`` and ``checkpoints``.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.identity import items_digest
from ..errors import ClipimoError, Terminated
from ..model.adapter import add_adapters, save_adapters
from ..model.backbone import Backbone, load_clip
from ..utils import fileio
from ..utils.distributed import DistEnv, setup_distributed
from ..utils.lock import LOCK_NAME, folder_lock
from ..utils.log import Progress, around_bar, logger, tqdm_disable, warn_random_init
from ..utils.outputs import claim_folder
from .checkpoints import (
    CHECKPOINT_DIR,
    METRICS,
    MetricsLog,
    flatten_optimizer,
    latest_checkpoint,
    read_checkpoint,
    restore_optimizer,
    resume_source,
    rng_state,
    save_step_checkpoint,
    set_rng_state,
)
from .config import RUN_CONTROL_FIELDS, TrainConfig
from .data import EpochBatches, ImageDataset, load_training_items
from .processes import all_reduce_mean, any_rank, default_workers, sigterm_requests, wrap_ddp


@dataclass
class TrainResult:
    """How a run ended; ``export_path`` is the adapter file written, None when it stopped early (and on
    ranks other than 0, which write nothing)."""

    status: str  # "finished" or "stopped" (max_steps reached)
    step: int
    total_steps: int
    out: Path
    export_path: Path | None
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]]


class _Window:
    """Metrics summed over the steps since the last log record, and the images and time they took."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], images: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.steps += 1
        self.images += images

    def means(self, env: DistEnv, step: int) -> dict[str, float]:
        """The window's mean of each metric over steps and processes; a non-finite one is an error."""
        means = {k: float(all_reduce_mean(v / self.steps, env)) for k, v in self.sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            raise ClipimoError(f"training diverged at step {step}: {means}")
        return means

    def speed(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        return {"images_per_s": self.images / max(seconds, 1e-9), "step_time_s": seconds / self.steps}


class _Monitor:
    """Where training's progress goes at each logging window: metrics.jsonl and a log line (rank 0),
    the progress bar and the history ``run`` returns. The log line is written whether or not a bar
    is drawn, so a redirected stderr shows the loss and the time left."""

    SHOWN = ("loss", "acc", "lr", "images_per_s")

    def __init__(self, trainer: Trainer, resumed: bool) -> None:
        main = trainer.env.is_main
        self.env = trainer.env
        self.file = MetricsLog(trainer.out / METRICS, trainer.step if resumed else None) if main else None
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=f"train {trainer.method}", unit="step",
                        dynamic_ncols=True, disable=tqdm_disable(trainer.cfg.progress) if main else True)
        self.lines = Progress(f"train {trainer.method}: step", trainer.total_steps, trainer.step) if main else None
        self.history: list[dict[str, Any]] = []
        self.window = _Window()

    def record(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Close the window ending at ``step`` (every rank: its means are reduced across processes)."""
        steps = self.window.steps
        record = {"step": step, "epoch": epoch, **self.window.means(self.env, step), **values, **self.window.speed()}
        self.history.append(record)
        self.window = _Window()
        shown = {k: f"{v:.4g}" for k, v in record.items() if k in self.SHOWN}
        self.bar.set_postfix(shown)
        if self.file:
            self.file.write(record)
        if self.lines:
            speed = f"{record['images_per_s']:.1f} images/s"
            metrics = ", ".join(f"{k} {v}" for k, v in shown.items() if k != "images_per_s")
            self.lines.update(f"epoch {epoch}, {metrics}, {speed}", steps)

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def _short_list(names: Sequence[str] | None, limit: int = 5) -> str:
    if names is None:
        return "none (unlabelled)"
    return "[" + ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") + "]"


TRAIN_RECORD, TRAIN_FORMAT = "train.json", "clipimo-train"  # how a training folder is known


def is_train_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training's record: its train.json, or (for folders of trainings made
    before that record existed) a readable training checkpoint or a config.yaml naming a training
    method and this very folder as its out."""
    try:
        return fileio.read_json(folder / TRAIN_RECORD, "training record").get("format") == TRAIN_FORMAT
    except ClipimoError:
        pass
    try:
        if latest_checkpoint(folder) is not None:
            return True
        recorded = fileio.read_yaml_mapping(folder / "config.yaml")
    except ClipimoError:
        return False
    return recorded.get("method") in ("supervised", "dino") and str(recorded.get("out")) == str(folder.resolve())


class Trainer:
    """Build the backbone with adapters, the method's trainable module and optimiser; run the loop.

    Subclasses implement ``build`` (head, ``self.student``, ``self.optimizer``, ``self.transform``)
    and ``train_step``, and optionally ``make_schedules``, ``extra_state`` / ``load_extra_state``,
    ``export_module`` and ``export_info``.
    """

    method = "base"
    need_labels = True

    def __init__(self, cfg: TrainConfig, env: DistEnv | None = None, backbone: Backbone | None = None):
        self.cfg = cfg
        self.env = env or setup_distributed(cfg.device)
        self.device = self.env.device
        self.amp = cfg.precision == "bf16"
        self.out = Path(cfg.out).expanduser()
        self.items, self.classnames = load_training_items(cfg.data, self.need_labels)
        self.items_sha256 = items_digest(self.items)
        self.backbone = backbone or load_clip(cfg.model, cfg.pretrained, device=self.device)
        if self.backbone.random_init and self.env.is_main:
            warn_random_init()
        self.model = self.backbone.model.to(self.device)
        torch.manual_seed(cfg.seed)  # adapter and head init: identical on every rank
        add_adapters(self.model, cfg.bottleneck, cfg.scale, cfg.dropout, cfg.init)
        self.student: nn.Module
        self.optimizer: torch.optim.Optimizer
        self.transform: Callable
        self.build()
        self.student.to(self.device)
        self.batches = EpochBatches(len(self.items), cfg.batch_size, self.env.world_size, self.env.rank,
                                    cfg.seed, cfg.drop_last)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.schedules = self.make_schedules()
        self.dataset = ImageDataset(self.items, self.transform)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(self.device, self.env.world_size)
        self.ddp_student = wrap_ddp(self.student, self.env)
        torch.manual_seed(cfg.seed + 1_000_003 * (1 + self.env.rank))  # dropout stream, per rank
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0

    # -- what a method defines -----------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def make_schedules(self) -> dict[str, np.ndarray]:
        """One value per step (``total_steps`` of them) of every setting that may change during
        training. ``lr`` sets every parameter group's learning rate, ``wd`` (if present) group 0's
        weight decay; all of them reach ``train_step`` and the metrics log."""
        return {"lr": np.full(self.total_steps, float(self.cfg.lr))}

    def train_step(self, batch: Any, epoch: int, values: dict[str, float]) -> dict[str, torch.Tensor]:
        """One optimisation step with this step's scheduled ``values``; returns tensor metrics
        (averaged over each logging window)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def export_module(self) -> nn.Module:
        """The image tower whose adapters are exported."""
        return self.model.visual

    def export_info(self) -> dict[str, Any]:
        return {}

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the end (or max_steps), holding ``out``'s folder lock on rank 0 like ``clipimo run``:
        two trainings into one folder would interleave checkpoints and lose one adapter. A folder that
        holds other files than a training's is refused (docs/files.md, "Output paths")."""
        if not self.env.is_main:
            return self._run()
        with folder_lock(self.out):
            claim_folder(self.out, is_train_folder, "a clipimo training folder (no train.json written by clipimo "
                         "train)", ignore=(LOCK_NAME,))
            fileio.write_json(self.out / TRAIN_RECORD, {"format": TRAIN_FORMAT, "method": self.method})
            return self._run()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        source = resume_source(cfg.resume, self.out)
        if source is not None:
            self.load_checkpoint(source)
            if self.env.is_main:
                logger.info("resuming from %s (step %d/%d)", source, self.step, self.total_steps)
        if self.env.is_main:
            self.write_run_config()
        monitor = _Monitor(self, resumed=source is not None)
        stopped = cfg.max_steps is not None and cfg.max_steps <= self.step < self.total_steps
        self.student.train()
        try:
            with sigterm_requests() as terminate, around_bar(not monitor.bar.disable):
                while self.epoch < cfg.epochs and not stopped:
                    stopped = self._run_epoch(monitor, terminate)
        finally:
            monitor.close()
        return self._finish(stopped, monitor.history)

    def _run_epoch(self, monitor: _Monitor, terminate: threading.Event) -> bool:
        """The rest of the current epoch; True when ``max_steps`` stopped it before the last step."""
        cfg, epoch = self.cfg, self.epoch
        self.on_epoch_start(epoch)
        for batch in self._loader(epoch, self.step_in_epoch):
            values = self.scheduled(self.step)
            monitor.window.add(self.train_step(batch, epoch, values), len(batch[1]) * self.env.world_size)
            self.step += 1
            self.step_in_epoch += 1
            epoch_end = self.step_in_epoch == self.steps_per_epoch
            if epoch_end:
                self.epoch, self.step_in_epoch = epoch + 1, 0
            limit = cfg.max_steps is not None and self.step >= cfg.max_steps
            if self.step % cfg.log_every == 0 or epoch_end or limit:
                monitor.record(self.step, epoch, values)
            monitor.bar.update(1)
            if epoch_end or limit or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                self.save_checkpoint()
            if limit and self.step < self.total_steps:
                return True
            if any_rank(terminate.is_set(), self.env):
                self.save_checkpoint()
                raise Terminated(f"terminated (SIGTERM) at step {self.step}/{self.total_steps}; "
                                 f"checkpoint written to {self.out / CHECKPOINT_DIR}; rerun the same "
                                 "command to resume")
        return False

    def _finish(self, stopped: bool, history: list[dict[str, Any]]) -> TrainResult:
        """Export the adapters of a finished run (rank 0) and say how it ended."""
        export = None
        if not stopped and self.env.is_main:
            export = self.cfg.export_path
            self.export(export)
            logger.info("wrote %s (%s, %d steps)", export, self.method, self.step)
        elif stopped and self.env.is_main:
            logger.info("stopped at step %d/%d (max_steps); run again to continue", self.step, self.total_steps)
        self.env.barrier()
        return TrainResult("stopped" if stopped else "finished", self.step, self.total_steps, self.out,
                           export, history[-1] if history else {}, history)

    def scheduled(self, step: int) -> dict[str, float]:
        """Step ``step``'s value of every schedule, with the optimizer's lr (and weight decay) set to them."""
        values = {name: float(schedule[step]) for name, schedule in self.schedules.items()}
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = values["lr"]
            if i == 0 and "wd" in values:
                group["weight_decay"] = values["wd"]
        return values

    # -- helpers -------------------------------------------------------------------------------
    def autocast(self) -> ContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def own_state(self) -> dict[str, torch.Tensor]:
        """Adapter and head tensors of the student (everything that is not frozen CLIP)."""
        return {n: t for n, t in self.student.state_dict().items()
                if ".adapter." in n or n.startswith("head.")}

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=self.batches.batches(epoch, start_step),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG (dropout)
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )

    def write_run_config(self) -> None:
        """The run's settings as ``<out>/config.yaml``, reusable as --config to continue the run
        (hence without max_steps and with resume auto)."""
        recorded = {**self.cfg.to_dict(), "max_steps": None, "resume": "auto"}
        fileio.write_text(self.out / "config.yaml", yaml.safe_dump({"method": self.method, **recorded}, sort_keys=False))

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "total_steps": self.total_steps,
            "world_size": self.env.world_size,
            "config": self.cfg.to_dict(),
            "backbone": self.backbone.identity,
            "n_images": len(self.items),
            "items_sha256": self.items_sha256,
            "classnames": self.classnames if self.need_labels else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint on rank 0 (with every rank's RNG state); None on the other ranks."""
        states = [rng_state(self.device)]
        if self.env.distributed:
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, {k: v.cpu() for k, v in states[0].items()})
            states = gathered
        if not self.env.is_main:
            return None
        tensors = {f"model.{k}": v for k, v in self.own_state().items()}
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer)
        tensors.update(opt_tensors)
        tensors.update(self.extra_state())
        for r, st in enumerate(states):
            for kind, t in st.items():
                tensors[f"rng.{kind}.{r}"] = t
        meta = {**self.checkpoint_meta(), "optimizer": opt_meta}
        return save_step_checkpoint(self.out, tensors, meta, self.cfg.keep_checkpoints)

    def load_checkpoint(self, path: Path) -> None:
        tensors, meta = read_checkpoint(path)
        if meta["method"] != self.method:
            raise ClipimoError(f"checkpoint {path} is from `train {meta['method']}`, not `train {self.method}`")
        if meta["world_size"] != self.env.world_size:
            raise ClipimoError(
                f"checkpoint {path} was written by {meta['world_size']} process(es), this run has "
                f"{self.env.world_size}: the data order depends on it, resume with the same count"
            )
        ours, theirs = self.cfg.to_dict(), meta["config"]
        diff = sorted(k for k in set(ours) | set(theirs)
                      if k not in RUN_CONTROL_FIELDS and ours.get(k) != theirs.get(k))
        if diff:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in diff)
            raise ClipimoError(
                f"cannot resume from {path}: settings differ ({detail}). Use the run's settings "
                f"(--config {self.out / 'config.yaml'}) or --resume none to start afresh"
            )
        ours_names = self.classnames if self.need_labels else None
        if meta.get("classnames") != ours_names:
            raise ClipimoError(
                f"cannot resume from {path}: it was trained on classes {_short_list(meta.get('classnames'))}, "
                f"--data {self.cfg.data} has {_short_list(ours_names)}; use the same data or --resume none")
        if meta.get("items_sha256") != self.items_sha256:
            raise ClipimoError(
                f"cannot resume from {path}: the (path, label) list of --data {self.cfg.data} differs from the one it "
                f"was trained on ({meta.get('n_images')} images then, {len(self.items)} now"
                f"{'' if meta.get('items_sha256') else '; the checkpoint predates data records'}); "
                "use the same data or --resume none")
        if meta["backbone"].get("weights") != self.backbone.identity.get("weights"):
            raise ClipimoError(f"checkpoint {path} was trained on weights {meta['backbone'].get('weights')}, "
                               f"this backbone has {self.backbone.identity.get('weights')}")
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        expected = set(self.own_state())
        if set(model_state) != expected:
            raise ClipimoError(f"checkpoint {path} does not fit this model "
                               f"(missing {sorted(expected - set(model_state))[:3]}, "
                               f"unexpected {sorted(set(model_state) - expected)[:3]})")
        self.student.load_state_dict(model_state, strict=False)
        restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.load_extra_state(tensors)
        rng = {kind: tensors[f"rng.{kind}.{self.env.rank}"] for kind in ("cpu", "cuda")
               if f"rng.{kind}.{self.env.rank}" in tensors}
        set_rng_state(rng, self.device)
        self.step, self.epoch, self.step_in_epoch = meta["step"], meta["epoch"], meta["step_in_epoch"]

    def export(self, path: str | os.PathLike) -> None:
        module = self.export_module()
        module.clipimo_identity = self.backbone.identity
        info = {
            "method": self.method,
            "config": self.cfg.to_dict(),
            "steps": self.step,
            "epochs": self.cfg.epochs,
            "world_size": self.env.world_size,
            "global_batch": self.batches.global_batch,
            "n_images": len(self.items),
            "random_init_backbone": self.backbone.random_init,
            **self.export_info(),
        }
        save_adapters(module, path, extra={"training": info})
