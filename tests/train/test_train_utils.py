"""Helpers shared by the training tests, and the configuration tests (defaults, YAML, flags)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, make_images
from safetensors import safe_open

from clipimo.errors import ClipimoError
from clipimo.train import DinoConfig, SupervisedConfig, make_config

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# a DINO head small enough for 2 CPU cores
SMALL_DINO = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops_number=2)


def write_csv(folder: Path, n: int = 24, n_classes: int = 3, size: int = 40, seed: int = 0) -> Path:
    """Generated coloured-noise images (class = mean colour) listed in a path,label CSV."""
    items = make_images(folder / "imgs", n, n_classes, size=size, seed=seed)
    csv = folder / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{it.path},c{it.label}\n" for it in items))
    return csv


def tiny_config(method: str, data: Path, out: Path, **kw):
    base = dict(data=str(data), out=str(out), model=TINY, device="cpu", progress=False, log_every=1,
                batch_size=8, checkpoint_every=0)
    if method == "dino":
        base.update(SMALL_DINO)
    base.update(kw)
    return make_config(method, **base)


def read_tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------


def test_paper_defaults():
    s = SupervisedConfig()
    assert (s.lr, s.weight_decay, s.batch_size, s.epochs, s.scale, s.bottleneck, s.dropout) == (
        8e-3, 0.01, 128, 1, 0.03, 64, 0.1)
    assert s.drop_last is True and s.precision == "fp32"
    d = DinoConfig()
    assert d.dropout == 0.0 and d.drop_last is True and d.precision == "fp32"
    assert (d.scale, d.epochs, d.batch_size, d.lr, d.min_lr, d.warmup_epochs) == (0.1, 10, 40, 8e-4, 2e-6, 2)
    assert (d.weight_decay, d.weight_decay_end, d.clip_grad, d.momentum_teacher) == (0.04, 0.4, 0.3, 0.9998)
    assert (d.warmup_teacher_temp, d.teacher_temp, d.warmup_teacher_temp_epochs, d.student_temp) == (0.04, 0.07, 3, 0.1)
    assert (d.center_momentum, d.out_dim, d.hidden_dim, d.bottleneck_dim) == (0.9, 65536, 2048, 256)
    assert d.global_crops_scale == (0.25, 1.0) and d.local_crops_scale == (0.05, 0.25) and d.local_crops_number == 10
    assert d.norm_last_layer and not d.train_head


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("method: dino\nbatch-size: 16\nlr: 1.0e-3\ntrain_head: true\nlocal_crops_scale: [0.1, 0.3]\n"
                 "pretrained: none\n")
    cfg = make_config("dino", y, lr=5e-4, local_crops_number=4)
    assert cfg.batch_size == 16 and cfg.lr == 5e-4 and cfg.train_head is True
    assert cfg.local_crops_scale == (0.1, 0.3) and cfg.local_crops_number == 4 and cfg.pretrained is None
    with pytest.raises(ClipimoError, match="unknown setting 'bach_size'"):
        make_config("dino", bach_size=3)
    with pytest.raises(ClipimoError, match="for method 'dino', not 'supervised'"):
        make_config("supervised", y)
    with pytest.raises(ClipimoError, match="bad value"):
        make_config("supervised", epochs="many")
    with pytest.raises(ClipimoError, match="local_crops_scale"):
        make_config("dino", local_crops_scale=(0.5, 0.2))


def test_command_parser(tmp_path):
    from clipimo.cli.app import build_parser
    from clipimo.cli.commands.train import config_from_args
    from clipimo.cli.config import apply

    parser = build_parser()

    def parse(argv):
        args = parser.parse_args(argv)
        apply(args, parser, argv)
        return args

    y = tmp_path / "c.yaml"
    y.write_text("model: from-yaml\nepochs: 3\nbatch_size: 5\n")
    args = parse(["train", "dino", "--config", str(y), "--no-norm-last-layer", "--batch-size", "7",
                  "--global-crops-scale", "0.3", "0.9", "--local-size", "48", "--max-steps", "none"])
    cfg = config_from_args(args)
    assert isinstance(cfg, DinoConfig)
    assert cfg.model == "from-yaml" and cfg.epochs == 3 and cfg.batch_size == 7 and cfg.norm_last_layer is False
    assert cfg.global_crops_scale == (0.3, 0.9) and cfg.local_size == 48 and cfg.max_steps is None
    assert cfg.device == "auto" and cfg.lr == 8e-4  # untouched defaults
    args = parse(["train", "supervised", "--model", "M", "--device", "cpu"])
    cfg = config_from_args(args)
    assert isinstance(cfg, SupervisedConfig) and cfg.model == "M" and cfg.device == "cpu" and cfg.lr == 8e-3
