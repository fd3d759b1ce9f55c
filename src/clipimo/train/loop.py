"""What both training methods share: processes (one, or torchrun + DDP), seeded data order,
checkpoints (safetensors + JSON, atomic, no pickle), resume, JSONL metrics, progress, export.

Data order and augmentation are functions of (seed, epoch, sample index) only: each epoch has one
seeded global permutation; global step s takes the next ``batch_size x world_size`` entries and
rank r takes every world_size-th of them from r; every sample's random augmentation is drawn
under its own seed. Together with restored model/optimizer/RNG state this makes a resumed CPU run
end bitwise where an uninterrupted one does, and a DDP step see the same images as one process
with the global batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .. import _io
from ..adapter import add_adapters, save_adapters
from ..backbone import Backbone, load_clip
from ..data.generic import is_image_file, read_csv_list, read_image_folder
from ..data.items import LabelledImage
from ..distributed import DistEnv, setup_distributed
from ..errors import ClipimoError, Terminated
from ..identity import items_digest
from ..images import load_rgb
from ..log import warn_random_init
from ..transforms import seeded_transform
from .config import RUN_CONTROL_FIELDS, TrainConfig

CHECKPOINT_FORMAT = "clipimo-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# processes


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        t = t.clone()
        dist.all_reduce(t)
        t /= env.world_size
    return t


# ----------------------------------------------------------------------------------------------
# data


def load_training_items(path: str | os.PathLike | None, need_labels: bool) -> tuple[list[LabelledImage], list[str]]:
    """A 'path,label' CSV or an ImageFolder tree; without ``need_labels`` also a flat image folder."""
    if not path:
        raise ClipimoError("no training images given: pass --data CSV_OR_FOLDER (or 'data:' in the config file)")
    source = Path(path)
    if source.is_dir():
        has_classes = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(source))
        if has_classes or need_labels:
            return read_image_folder(source)
        files = sorted(str(source.resolve() / n) for n in os.listdir(source) if is_image_file(n))
        if not files:
            raise ClipimoError(f"{source}: no image files")
        return [LabelledImage(f, 0) for f in files], ["unlabelled"]
    if source.is_file():
        return read_csv_list(source, verify_files=True)
    raise ClipimoError(f"--data {source}: no such CSV file or folder")


def _short_list(names: Sequence[str] | None, limit: int = 5) -> str:
    if names is None:
        return "none (unlabelled)"
    return "[" + ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") + "]"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of one sample in one epoch (independent of rank and batch layout)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class ImageDataset(Dataset):
    """Items keyed by ``(index, sample_seed)``: the transform runs under that seed (torch RNG,
    forked so the caller's RNG stream is untouched)."""

    def __init__(self, items: Sequence[LabelledImage], transform: Callable):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        item = self.items[index]
        try:
            return seeded_transform(self.transform, load_rgb(item.path), seed), item.label
        except Exception as err:  # PIL raises many types, for damaged files also inside the transform
            raise ImageReadError(f"cannot read training image {item.path}: {err}") from err


class ImageReadError(ClipimoError):
    """A training image that cannot be read. Raised in a DataLoader worker, it reaches the main
    process rebuilt from the worker's traceback text; the constructor keeps only the message."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message[message.rfind(marker) + len(marker):].strip()
        super().__init__(message)


class EpochBatches:
    """Seeded per-epoch order, split into global steps and, within a step, across ranks."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False):
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.drop_last = seed, drop_last
        self.global_batch = batch_size * world_size
        if n == 0:
            raise ClipimoError("the training set is empty")
        if drop_last:
            self.steps_per_epoch = n // self.global_batch
            if self.steps_per_epoch == 0:
                raise ClipimoError(
                    f"{n} training images give no full global batch of {self.global_batch} "
                    f"({batch_size} x {world_size} processes); lower --batch-size or pass --no-drop-last"
                )
        else:
            self.steps_per_epoch = math.ceil(math.ceil(n / world_size) * world_size / self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([int(self.seed), int(epoch), 0x5EED]).permutation(self.n)
        if self.drop_last:
            return perm[: self.steps_per_epoch * self.global_batch]
        total = math.ceil(self.n / self.world_size) * self.world_size
        return np.concatenate([perm, perm[: total - self.n]])  # like DistributedSampler's padding

    def batches(self, epoch: int, start_step: int = 0) -> list[list[tuple[int, int]]]:
        order = self.order(epoch)
        out = []
        for step in range(start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch][self.rank::self.world_size]
            out.append([(int(i), sample_seed(self.seed, epoch, int(i))) for i in chunk])
        return out


def default_workers(device: torch.device, world_size: int) -> int:
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 1) // max(world_size, 1)
    return max(0, min(8, per_process - 1))


# ----------------------------------------------------------------------------------------------
# checkpoints: safetensors tensors + JSON metadata, no pickle


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, torch.Tensor], dict]:
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


def write_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    _io.write_safetensors(path, tensors, "clipimo_checkpoint",
                          {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta})


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = _io.read_safetensors(path, "clipimo_checkpoint", "training checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ClipimoError(f"{path}: unsupported checkpoint format {meta.get('format')!r} v{meta.get('version')}")
    return tensors, meta


def checkpoint_candidates(out: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run, newest first: the one ``latest.json`` names, then the older ones
    (a damaged latest file or pointer then falls back to the previous checkpoint)."""
    folder = Path(out) / CHECKPOINT_DIR
    found = sorted(folder.glob("step_*.safetensors"), reverse=True)
    pointer = folder / LATEST
    try:
        named = folder / _io.read_json(pointer, "checkpoint pointer")["checkpoint"]
    except (ClipimoError, KeyError, TypeError) as err:
        if pointer.exists():
            print(f"{pointer} is unreadable ({err}); using the newest checkpoint file instead", file=sys.stderr)
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
            print(f"checkpoint unreadable: {err}; {nxt}", file=sys.stderr)
    if candidates:
        raise ClipimoError(f"no readable checkpoint in {Path(out) / CHECKPOINT_DIR}; pass --resume none to start afresh")
    return None


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
# metrics


class MetricsLog:
    """JSONL, one object per logged step; on resume the lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            _io.write_text(path, "")
        elif path.is_file():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            _io.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a partial last line (a write cut off by a crash or a full
    disk) is dropped with a message, a damaged earlier line is an error naming the line."""
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
                print(f"{path}:{n}: dropping a partial last line (an interrupted write)", file=sys.stderr)
                break
            raise ClipimoError(f"{path}:{n}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise ClipimoError(f"{path}:{n}: expected a JSON object, got {line[:60]!r}")
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    status: str  # "finished" or "stopped" (max_steps reached)
    step: int
    total_steps: int
    out: Path
    export_path: Path | None
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]]


class Trainer:
    """Build the backbone with adapters, the method's trainable module and optimiser; run the loop.

    Subclasses implement ``build`` (head, ``self.student``, ``self.optimizer``, ``self.transform``),
    ``train_step`` and optionally ``extra_state`` / ``load_extra_state`` / ``export_module``.
    """

    method = "base"
    need_labels = True

    def __init__(self, cfg: TrainConfig, env: DistEnv | None = None, backbone: Backbone | None = None):
        self.cfg = cfg
        self.env = env or setup_distributed(cfg.device)
        self.device = self.env.device
        self.amp = cfg.precision == "bf16"
        self.out = Path(cfg.out)
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
        self.after_build()
        self.dataset = ImageDataset(self.items, self.transform)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(self.device, self.env.world_size)
        self.ddp_student = self._wrap(self.student)
        torch.manual_seed(cfg.seed + 1_000_003 * (1 + self.env.rank))  # dropout stream, per rank
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0

    # -- subclass hooks ------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def after_build(self) -> None:
        """Called once steps_per_epoch / total_steps are known (schedules)."""

    def train_step(self, batch: Any, step: int, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One optimisation step; returns (tensor metrics averaged over logging, scalar settings)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def export_module(self) -> nn.Module:
        """The image tower whose adapters are exported."""
        return self.model.visual

    def export_info(self) -> dict[str, Any]:
        return {}

    # -- helpers -------------------------------------------------------------------------------
    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.env.distributed:
            return module
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        return DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,
        )

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
        folder = self.out / CHECKPOINT_DIR
        name = f"step_{self.step:08d}.safetensors"
        write_checkpoint(folder / name, tensors, meta)
        _io.write_json(folder / LATEST, {"checkpoint": name, "step": self.step, "epoch": self.epoch,
                                         "step_in_epoch": self.step_in_epoch})
        old = sorted(folder.glob("step_*.safetensors"))[: -self.cfg.keep_checkpoints]
        for path in old:
            if path.name != name:
                path.unlink(missing_ok=True)
        return folder / name

    def _resume_source(self) -> Path | None:
        choice = (self.cfg.resume or "auto").strip()
        if choice.lower() == "none":
            return None
        if choice.lower() == "auto":
            return latest_checkpoint(self.out)
        return Path(choice)

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

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        source = self._resume_source()
        resumed = source is not None
        if resumed:
            self.load_checkpoint(source)
            if env.is_main:
                print(f"resuming from {source} (step {self.step}/{self.total_steps})", flush=True)
        if env.is_main:
            # the run's settings, reusable as --config to continue it (hence no max_steps / resume)
            recorded = {**cfg.to_dict(), "max_steps": None, "resume": "auto"}
            _io.write_text(self.out / "config.yaml",
                           yaml.safe_dump({"method": self.method, **recorded}, sort_keys=False))
        log = MetricsLog(self.out / METRICS, self.step if resumed else None) if env.is_main else None
        history: list[dict[str, Any]] = []
        pbar = None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm
            pbar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.method}", unit="step",
                        dynamic_ncols=True, disable=None)
        acc: dict[str, torch.Tensor] = {}
        acc_steps, acc_images = 0, 0
        t_last = time.perf_counter()
        last: dict[str, Any] = {}
        stopped = cfg.max_steps is not None and self.step >= cfg.max_steps and self.step < self.total_steps
        self.student.train()
        terminate = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: terminate.set())
        try:
            while self.epoch < cfg.epochs and not stopped:
                epoch = self.epoch
                self.on_epoch_start(epoch)
                for batch in self._loader(epoch, self.step_in_epoch):
                    metrics, settings = self.train_step(batch, self.step, epoch)
                    n_images = len(batch[1]) * env.world_size
                    self.step += 1
                    self.step_in_epoch += 1
                    epoch_end = self.step_in_epoch == self.steps_per_epoch
                    if epoch_end:
                        self.epoch, self.step_in_epoch = epoch + 1, 0
                    for k, v in metrics.items():
                        acc[k] = acc.get(k, 0) + v.detach().float()
                    acc_steps += 1
                    acc_images += n_images
                    if self.step % cfg.log_every == 0 or epoch_end or self.step == cfg.max_steps:
                        means = {k: float(all_reduce_mean(v / acc_steps, env)) for k, v in acc.items()}
                        if not all(math.isfinite(v) for v in means.values()):
                            raise ClipimoError(f"training diverged at step {self.step}: {means}")
                        now = time.perf_counter()
                        record = {"step": self.step, "epoch": epoch, **means, **settings,
                                  "images_per_s": acc_images / max(now - t_last, 1e-9),
                                  "step_time_s": (now - t_last) / acc_steps}
                        history.append(record)
                        last = record
                        if log:
                            log.write(record)
                        if pbar:
                            pbar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                              if k in ("loss", "acc", "lr", "images_per_s")})
                        acc, acc_steps, acc_images, t_last = {}, 0, 0, time.perf_counter()
                    if pbar:
                        pbar.update(1)
                    limit = cfg.max_steps is not None and self.step >= cfg.max_steps
                    if epoch_end or limit or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                        self.save_checkpoint()
                    if limit and self.step < self.total_steps:
                        stopped = True
                        break
                    if self._all_ranks(terminate.is_set()):
                        self.save_checkpoint()
                        raise Terminated(f"terminated (SIGTERM) at step {self.step}/{self.total_steps}; checkpoint "
                                         f"written to {self.out / CHECKPOINT_DIR}; rerun the same command to resume")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if pbar:
                pbar.close()
            if log:
                log.close()
        export = None
        if not stopped:
            export = cfg.export_path
            if env.is_main:
                self.export(export)
                print(f"wrote {export} ({self.method}, {self.step} steps)", flush=True)
        elif env.is_main:
            print(f"stopped at step {self.step}/{self.total_steps} (max_steps); run again to continue", flush=True)
        env.barrier()
        return TrainResult("stopped" if stopped else "finished", self.step, self.total_steps, self.out,
                           export, last, history)

    def _all_ranks(self, flag: bool) -> bool:
        """Whether any process has ``flag`` set, so all of them stop (and checkpoint) at the same step."""
        if not self.env.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def on_epoch_start(self, epoch: int) -> None:
        pass

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
