"""``clipimo train supervised|dino``: train the IMO adapters once per backbone."""
from __future__ import annotations

import argparse
import dataclasses

from ...train.config import CONFIGS, TrainConfig, make_config
from ..config import absolute, out_file, out_folder, path_arg, source_arg
from ..model_args import add_backbone_args

_BACKBONE_FIELDS = ("model", "pretrained", "device")
# settings that name files: stored absolute, so <out>/config.yaml continues the run from any folder
_PATHS = {"data": path_arg, "out": out_folder("a training run"), "export": out_file("an adapter", ".safetensors"),
          "model": source_arg, "pretrained": source_arg}

_HELP = {"supervised": "linear-head cross-entropy on a labelled generic set (paper: 1 epoch, lr 8e-3, batch 128)",
         "dino": "DINO self-distillation with multi-crop (paper: 10 epochs, batch 40 per GPU on 3 GPUs; the "
                 "teacher's adapters are exported)"}
_SETTINGS = ("Settings: the paper's defaults, then --config FILE.yaml, then flags. One process (CPU or one GPU) "
             "or several GPUs with torchrun.")
_EPILOG = """\
examples:
  clipimo train {m} --data generic.csv --pretrained openai --out runs/{m}
  clipimo train {m} --config {m}.yaml --batch-size 64           # flags override the YAML file
  torchrun --nproc_per_node 3 -m clipimo train {m} --config {m}.yaml --device cuda
  clipimo train {m} --config runs/{m}/config.yaml               # continue a killed run (--resume auto)
"""


def add_train_parser(sub: argparse._SubParsersAction, method: str) -> argparse.ArgumentParser:
    from ...train.config import add_config_flags

    cls = CONFIGS[method]
    p = sub.add_parser(method, help=_HELP[method], description=_HELP[method] + ". " + _SETTINGS,
                       epilog=_EPILOG.format(m=method))
    add_backbone_args(p)
    add_config_flags(p, cls, skip=_BACKBONE_FIELDS)
    for action in p._actions:
        action.type = _PATHS.get(action.dest, action.type)
        if action.dest == "device":
            action.help = ("auto (CUDA when available, else CPU), cpu or cuda[:index]; under torchrun each process "
                           "uses cuda:LOCAL_RANK")
    p.set_defaults(func=run, method=method, config_view=settings)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the IMO adapters (supervised or DINO)",
                              description="Train the IMO adapters once per backbone. " + _SETTINGS)
    sub = p.add_subparsers(dest="train_command", required=True, metavar="METHOD")
    for method in CONFIGS:
        add_train_parser(sub, method)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The method's config from the parsed settings (defaults < --config YAML < flags), paths absolute."""
    actions = {a.dest: a for a in args.command_parser._actions}
    names = [f.name for f in dataclasses.fields(CONFIGS[args.method])]
    return make_config(args.method, None, **{k: absolute(actions[k], getattr(args, k)) for k in names})


def settings(args: argparse.Namespace) -> dict:
    """What ``--print-config`` shows: the config the run would write as ``<out>/config.yaml``."""
    return {"method": args.method, **config_from_args(args).to_dict()}


def run(args: argparse.Namespace) -> int:
    from ...train import train

    result = train(config_from_args(args))
    if result.export_path is not None:  # the command's result: the adapter file, for the next command
        print(result.export_path)
    return 0 if result.status in ("finished", "stopped") else 1
