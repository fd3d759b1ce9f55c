"""Adapter training (docs/methods.md, "Adapter training"): supervised and DINO, one process or torchrun +
DDP, resumable.

>>> from clipimo.train import make_config, train_supervised
>>> cfg = make_config("supervised", data="generic.csv", out="runs/sup", pretrained="openai")
>>> result = train_supervised(cfg)          # writes runs/sup/adapter.safetensors
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from ..utils.distributed import DistEnv
    from .config import TrainConfig
    from .loop import TrainResult

_EXPORTS = {
    **dict.fromkeys(("CONFIGS", "DinoConfig", "SupervisedConfig", "TrainConfig", "make_config"), "config"),
    **dict.fromkeys(("DINOHead", "DINOLoss", "DinoTrainer", "MultiCropModel", "MultiCropTransform",
                     "cosine_schedule", "train_dino"), "dino"),
    **dict.fromkeys(("read_checkpoint", "read_metrics"), "checkpoints"),
    **dict.fromkeys(("TrainResult", "Trainer"), "loop"),
    **dict.fromkeys(("crop_sizes", "enable_any_input_size", "interpolate_pos_embed"), "posembed"),
    **dict.fromkeys(("ClassifierModel", "SupervisedTrainer", "train_supervised"), "supervised"),
}
# Submodules load on first use: the command line reads the configs without importing torch.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def train(cfg: TrainConfig, env: DistEnv | None = None) -> TrainResult:
    """Run the method ``cfg`` belongs to."""
    from .dino import train_dino
    from .supervised import train_supervised

    return {"supervised": train_supervised, "dino": train_dino}[cfg.method](cfg, env)


__all__ = [
    "CONFIGS", "ClassifierModel", "DINOHead", "DINOLoss", "DinoConfig", "DinoTrainer",
    "MultiCropModel", "MultiCropTransform", "SupervisedConfig", "SupervisedTrainer",
    "TrainConfig", "TrainResult", "Trainer", "cosine_schedule", "crop_sizes", "enable_any_input_size",
    "interpolate_pos_embed", "make_config", "read_checkpoint", "read_metrics",
    "train", "train_dino", "train_supervised",
]
