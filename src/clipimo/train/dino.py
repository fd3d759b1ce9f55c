"""DINO self-distillation parts: head, loss, multi-crop augmentation, schedules, crop wrapper.

Written after DINO's ``main_dino.py`` / ``utils.py`` (Caron et al. 2021), with the project's
fixes: CLIP normalisation instead of ImageNet's, augmentation randomness drawn from torch's RNG
(seeded per sample by the data pipeline, so runs and resumed runs see the same crops).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.nn import functional as F
from torchvision import transforms as T

from ..errors import ClipimoError
from ..model.adapter import image_tower
from ..utils.distributed import DistEnv, setup_distributed
from .config import DinoConfig
from .loop import Trainer, TrainResult
from .posembed import crop_sizes, enable_any_input_size

# ----------------------------------------------------------------------------------------------
# schedules (one value per optimisation step, as plain numpy arrays)


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: float = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO's ``cosine_scheduler``: linear warm-up from ``start_warmup_value`` to ``base`` over
    ``warmup_epochs``, then half a cosine from ``base`` to ``final``; ``epochs * steps_per_epoch`` values."""
    total = int(epochs * steps_per_epoch)
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total)
    warmup = np.linspace(start_warmup_value, base, warmup_steps) if warmup_steps > 0 else np.array([])
    iters = np.arange(total - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine)).astype(np.float64)
    assert len(schedule) == total
    return schedule


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear ``warmup_temp -> temp`` over ``warmup_epochs``, then ``temp``."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.array([])
    rest = np.full(max(epochs - len(warm), 0), temp)
    return np.concatenate((warm, rest))[:epochs].astype(np.float64)


# ----------------------------------------------------------------------------------------------
# head and loss


class DINOHead(nn.Module):
    """MLP in -> hidden -> hidden -> bottleneck (GELU, no BN), L2-normalise, weight-normalised
    Linear(bottleneck -> out_dim, no bias). With ``norm_last_layer`` the gain is fixed at 1, i.e.
    the last layer's rows are unit vectors."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        # weight norm written out (torch's weight_norm helpers are deprecated / parametrised):
        # weight = g * v / ||v|| per output row; v initialised like nn.Linear, g = 1.
        self.last_layer_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.last_layer_v, a=5 ** 0.5)
        self.norm_last_layer = bool(norm_last_layer)
        if self.norm_last_layer:
            self.register_buffer("last_layer_g", torch.ones(out_dim, 1))
        else:
            self.last_layer_g = nn.Parameter(torch.ones(out_dim, 1))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def last_layer_weight(self) -> torch.Tensor:
        v = self.last_layer_v
        return self.last_layer_g * v / v.norm(dim=1, keepdim=True)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.last_layer_v, self.last_layer_g) if isinstance(p, nn.Parameter)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return F.linear(x, self.last_layer_weight().to(x.dtype))


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution of each global view and
    the student distribution of every other view, averaged over those pairs.

    The center (an EMA of the teacher outputs, averaged across processes) is a buffer; it is
    updated after the loss is computed, from the teacher outputs of this step.
    """

    def __init__(self, out_dim: int, ncrops: int, teacher_temps: np.ndarray, student_temp: float = 0.1,
                 center_momentum: float = 0.9, n_teacher_views: int = 2):
        super().__init__()
        self.ncrops = int(ncrops)
        self.n_teacher_views = int(n_teacher_views)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.teacher_temps = np.asarray(teacher_temps, dtype=np.float64)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int,
                update_center: bool = True) -> torch.Tensor:
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(self.n_teacher_views)
        total = student_output.new_zeros(())
        n_terms = 0
        for iq, q in enumerate(teacher_out):
            for v, s in enumerate(student_out):
                if v == iq:
                    continue  # the same view seen by teacher and student
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n_terms += 1
        loss = total / max(n_terms, 1)
        if update_center:
            self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        total = torch.sum(teacher_output.float(), dim=0, keepdim=True)
        count = total.new_full((1, 1), float(len(teacher_output)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.cat([total, count], dim=1)  # one all-reduce for sums and counts
            torch.distributed.all_reduce(both)
            total, count = both[:, :-1], both[:, -1:]
        batch_center = total / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


class MultiCropModel(nn.Module):
    """Image tower + head over a list of crops: crops of equal size go through the tower in one
    batch (consecutive runs of the same resolution), then the head sees all embeddings at once."""

    def __init__(self, visual: nn.Module, head: nn.Module):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        outputs, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            outputs.append(self.visual(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(outputs))


@torch.no_grad()
def ema_update(teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor], momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student (DINO's update, parameter by parameter)."""
    for pt, ps in zip(teacher_params, student_params):
        pt.mul_(momentum).add_((1 - momentum) * ps.detach())


def clip_gradients(params: Sequence[torch.Tensor], clip: float, mode: str = "param") -> None:
    """'param': DINO's per-tensor clipping to norm ``clip``; 'global': clip_grad_norm_ over all."""
    grads = [p for p in params if p.grad is not None]
    if clip <= 0 or not grads:
        return
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(grads, clip)
        return
    for p in grads:
        coef = clip / (p.grad.norm(2) + 1e-6)
        p.grad.mul_(torch.clamp(coef, max=1.0))  # no host sync; x * 1.0 is exact when not clipped


# ----------------------------------------------------------------------------------------------
# multi-crop augmentation


class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and radius uniform in ``radius`` (torch RNG)."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)):
        self.p = p
        self.radius = radius

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return img
        lo, hi = self.radius
        r = lo + (hi - lo) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=r))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, radius={self.radius})"


class MultiCropTransform:
    """2 global crops + N local crops with DINO's augmentations and CLIP normalisation.

    Global 1: blur p 1.0; global 2: blur p 0.1 + solarize p 0.2; locals: blur p 0.5. All: random
    resized crop (bicubic), flip, colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2. The
    blur radius range (0.1, 2.0) px is DINO's at 224 px, scaled by global_size / 224.
    """

    def __init__(self, global_size: int, local_size: int, mean: Sequence[float], std: Sequence[float],
                 global_scale: tuple[float, float] = (0.25, 1.0), local_scale: tuple[float, float] = (0.05, 0.25),
                 local_number: int = 10):
        bicubic = T.InterpolationMode.BICUBIC
        f = global_size / 224.0
        radius = (0.1 * f, 2.0 * f)
        flip_jitter = [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        normalize = [T.ToTensor(), T.Normalize(mean, std)]
        self.global1 = T.Compose([T.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
                                  *flip_jitter, RandomGaussianBlur(1.0, radius), *normalize])
        self.global2 = T.Compose([T.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
                                  *flip_jitter, RandomGaussianBlur(0.1, radius), T.RandomSolarize(128, p=0.2),
                                  *normalize])
        self.local = T.Compose([T.RandomResizedCrop(local_size, scale=local_scale, interpolation=bicubic),
                                *flip_jitter, RandomGaussianBlur(0.5, radius), *normalize])
        self.local_number = int(local_number)
        self.global_size, self.local_size = int(global_size), int(local_size)

    @property
    def ncrops(self) -> int:
        return 2 + self.local_number

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(img), self.global2(img)]
        crops.extend(self.local(img) for _ in range(self.local_number))
        return crops


# ----------------------------------------------------------------------------------------------
# the trainer


class DinoTrainer(Trainer):
    """Student = image tower with adapters + DINO head; teacher = EMA of the student's trainable
    tensors (the rest is shared by value), fed the global crops only; the TEACHER's adapters are
    exported."""

    method = "dino"
    need_labels = False

    def build(self) -> None:
        cfg = self.cfg
        if image_tower(self.model).kind != "open_clip-vit":
            raise ClipimoError("DINO adapter training feeds crops of several sizes, which only open_clip's native "
                               "ViT tower takes; train adapters of timm towers (SigLIP, EVA02) with the "
                               "supervised method")
        visual = enable_any_input_size(self.model)
        self.global_size, self.local_size = crop_sizes(self.backbone.image_size, visual.patch_size,
                                                       cfg.local_size, cfg.global_size)
        head = DINOHead(int(visual.output_dim), cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                        norm_last_layer=cfg.norm_last_layer)
        head.requires_grad_(bool(cfg.train_head))
        self.student = MultiCropModel(visual, head).to(self.device)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        named = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        self.trainable_names = [n for n, _ in named]
        self.student_params = [p for _, p in named]
        teacher_named = dict(self.teacher.named_parameters())
        self.teacher_params = [teacher_named[n] for n in self.trainable_names]
        regularized = [p for n, p in named if not n.endswith(".bias") and p.ndim > 1]
        plain = [p for n, p in named if n.endswith(".bias") or p.ndim <= 1]
        # lr and weight decay are set every step from the schedules (the loop); group 0 carries the decay
        self.optimizer = torch.optim.AdamW([{"params": regularized}, {"params": plain, "weight_decay": 0.0}],
                                           lr=0.0, weight_decay=cfg.weight_decay)
        self.transform = MultiCropTransform(
            self.global_size, self.local_size, self.backbone.mean, self.backbone.std,
            tuple(cfg.global_crops_scale), tuple(cfg.local_crops_scale), cfg.local_crops_number,
        )
        temps = teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs,
                                      cfg.epochs)
        self.dino_loss = DINOLoss(cfg.out_dim, self.transform.ncrops, temps, cfg.student_temp,
                                  cfg.center_momentum).to(self.device)

    def make_schedules(self) -> dict[str, np.ndarray]:
        cfg, spe = self.cfg, self.steps_per_epoch
        self.peak_lr = cfg.lr * self.batches.global_batch / 256.0
        return {
            "lr": cosine_schedule(self.peak_lr, cfg.min_lr, cfg.epochs, spe, cfg.warmup_epochs),
            "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, spe),
            "momentum": cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, spe),
            # per epoch in DINOLoss; per step here only so that each step logs its value
            "teacher_temp": np.repeat(self.dino_loss.teacher_temps, spe),
        }

    def train_step(self, batch: Any, epoch: int, values: dict[str, float]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        crops, _ = batch
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        with torch.no_grad(), self.autocast():
            teacher_out = self.teacher(crops[:2])
        with self.autocast():
            student_out = self.ddp_student(crops)
        loss = self.dino_loss(student_out.float(), teacher_out.float(), epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.student_params, cfg.clip_grad, cfg.clip_mode)
        if cfg.train_head and epoch < cfg.freeze_last_layer:
            for p in self.student.head.last_layer_parameters():
                p.grad = None
        self.optimizer.step()
        ema_update(self.teacher_params, self.student_params, values["momentum"])
        return {"loss": loss.detach()}

    def extra_state(self) -> dict[str, torch.Tensor]:
        out = {f"teacher.{n}": p.detach() for n, p in zip(self.trainable_names, self.teacher_params)}
        out["dino.center"] = self.dino_loss.center.detach()
        return out

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in zip(self.trainable_names, self.teacher_params):
                p.copy_(tensors[f"teacher.{n}"])
            self.dino_loss.center.copy_(tensors["dino.center"])

    def export_module(self) -> nn.Module:
        return self.teacher.visual

    def export_info(self) -> dict[str, Any]:
        return {"exported": "teacher", "global_size": self.global_size, "local_size": self.local_size,
                "head": "trained" if self.cfg.train_head else "frozen at random init",
                "peak_lr": self.peak_lr}


def train_dino(cfg: DinoConfig, env: DistEnv | None = None, **kw: Any) -> TrainResult:
    """Train adapters by DINO self-distillation; returns the run's ``TrainResult``."""
    own = env is None
    env = env or setup_distributed(cfg.device)
    try:
        return DinoTrainer(cfg, env, **kw).run()
    finally:
        if own:
            env.cleanup()
