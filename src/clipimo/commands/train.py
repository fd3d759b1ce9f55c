"""``clipimo train supervised|dino``: train the IMO adapters once per backbone (METHOD.md §4).

Settings: the paper's defaults, then ``--config FILE.yaml``, then flags. One process (CPU or one
GPU) or several GPUs with torchrun, e.g.::

    clipimo train supervised --data generic.csv --pretrained openai --out runs/sup
    torchrun --nproc_per_node 3 -m clipimo.cli train dino --data generic.csv --pretrained openai --out runs/dino
"""
from __future__ import annotations

import argparse
import dataclasses

from ..train.config import CONFIGS, make_config
from .features import add_backbone_args

_BACKBONE_FIELDS = ("model", "pretrained", "device")

_EPILOG = """\
examples:
  clipimo train {m} --data generic.csv --pretrained openai --out runs/{m}
  clipimo train {m} --config {m}.yaml --batch-size 64           # flags override the YAML file
  torchrun --nproc_per_node 3 -m clipimo.cli train {m} --config {m}.yaml --device cuda
  clipimo train {m} --config runs/{m}/config.yaml               # continue a killed run (--resume auto)
"""


def add_train_parser(sub: argparse._SubParsersAction, method: str) -> argparse.ArgumentParser:
    from ..train.config import add_config_flags

    cls = CONFIGS[method]
    helps = {"supervised": "linear-head cross-entropy on a labelled generic set (paper: 1 epoch, lr 8e-3)",
             "dino": "DINO self-distillation with multi-crop (paper: 10 epochs, teacher adapters exported)"}
    p = sub.add_parser(method, help=helps[method], description=(cls.__doc__ or "").strip(),
                       epilog=_EPILOG.format(m=method), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file of settings (keys: the flag names)")
    add_backbone_args(p)
    # backbone flags: "not given" unless passed, so a YAML file can set them
    for action in p._actions:
        if action.dest in _BACKBONE_FIELDS:
            action.default = argparse.SUPPRESS
        if action.dest == "device":
            action.help = "torch device: auto (cuda if available), cpu, cuda; under torchrun each process uses cuda:LOCAL_RANK"
    add_config_flags(p, cls, skip=_BACKBONE_FIELDS)
    p.set_defaults(func=run, train_method=method)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the IMO adapters (supervised or DINO)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="train_command", required=True, metavar="METHOD")
    for method in CONFIGS:
        add_train_parser(sub, method)


def config_from_args(args: argparse.Namespace):
    """The method's config from defaults, ``--config`` YAML and the flags that were given."""
    names = {f.name for f in dataclasses.fields(CONFIGS[args.train_method])}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return make_config(args.train_method, args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    cfg = config_from_args(args)
    result = train(cfg)
    return 0 if result.status in ("finished", "stopped") else 1
