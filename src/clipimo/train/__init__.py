"""Adapter training (METHOD.md §4): supervised and DINO, one process or torchrun + DDP, resumable.

>>> from clipimo.train import make_config, train_supervised
>>> cfg = make_config("supervised", data="generic.csv", out="runs/sup", pretrained="openai")
>>> result = train_supervised(cfg)          # writes runs/sup/adapter.safetensors
"""
from .config import CONFIGS, DinoConfig, SupervisedConfig, TrainConfig, make_config
from .dino import DINOHead, DINOLoss, DinoTrainer, MultiCropModel, MultiCropTransform, cosine_schedule, train_dino
from .loop import DistEnv, TrainResult, Trainer, read_checkpoint, read_metrics, setup_distributed
from .posembed import crop_sizes, enable_any_input_size, interpolate_pos_embed
from .supervised import ClassifierModel, SupervisedTrainer, train_supervised

TRAINERS = {"supervised": train_supervised, "dino": train_dino}


def train(cfg: TrainConfig, env: DistEnv | None = None) -> TrainResult:
    """Run the method ``cfg`` belongs to."""
    return TRAINERS[cfg.method](cfg, env)


__all__ = [
    "CONFIGS", "ClassifierModel", "DINOHead", "DINOLoss", "DinoConfig", "DinoTrainer", "DistEnv",
    "MultiCropModel", "MultiCropTransform", "SupervisedConfig", "SupervisedTrainer", "TRAINERS",
    "TrainConfig", "TrainResult", "Trainer", "cosine_schedule", "crop_sizes", "enable_any_input_size",
    "interpolate_pos_embed", "make_config", "read_checkpoint", "read_metrics", "setup_distributed",
    "train", "train_dino", "train_supervised",
]
