"""Supervised adapter training: a linear head on the projected, unnormalised image embedding
(adapters on), cross-entropy, AdamW(weight decay 0.01), constant lr 8e-3, batch 128, 1 epoch.

Images go through the backbone's eval transform (Resize bicubic + CenterCrop + CLIP
normalisation): the original code fed unnormalised pixels here, a bug this project fixes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..model.adapter import adapter_parameters
from ..utils.distributed import DistEnv, setup_distributed
from .config import SupervisedConfig
from .loop import Trainer, TrainResult


class ClassifierModel(nn.Module):
    """``head(visual(x))``: the image tower's projected embedding, unnormalised, then Linear."""

    def __init__(self, visual: nn.Module, n_classes: int, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


class SupervisedTrainer(Trainer):
    method = "supervised"
    need_labels = True

    def build(self) -> None:
        cfg = self.cfg
        self.student = ClassifierModel(self.model.visual, len(self.classnames), self.backbone.embed_dim)
        params = adapter_parameters(self.model) + list(self.student.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.transform = self.backbone.preprocess

    def train_step(self, batch: Any, epoch: int, values: dict[str, float]) -> dict[str, torch.Tensor]:
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.ddp_student(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss.detach(), "acc": acc}

    def export_info(self) -> dict[str, Any]:
        return {"n_classes": len(self.classnames)}


def train_supervised(cfg: SupervisedConfig, env: DistEnv | None = None, **kw: Any) -> TrainResult:
    """Train adapters with the supervised objective; returns the run's ``TrainResult``."""
    own = env is None
    env = env or setup_distributed(cfg.device)
    try:
        return SupervisedTrainer(cfg, env, **kw).run()
    finally:
        if own:
            env.cleanup()
