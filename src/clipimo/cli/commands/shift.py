"""``clipimo shift``: ImageNet few-shot cache + tuned hyper-parameters applied to ImageNet-V2/-Sketch/-A/-R."""
from __future__ import annotations

import argparse

from ...data.registry import SHIFT_SETS
from ...defaults import DEFAULT_METHODS, DEFAULT_SEEDS
from ...methods.names import METHOD_NAMES
from ..args import add_method_option_args
from ..config import add_list_argument, out_folder, path_arg
from ..model_args import add_backbone_args, add_extractor_args, make_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shift", help="distribution shift: ImageNet cache and hyper-parameters on ImageNet-V2/-Sketch/-A/-R")
    p.add_argument("--root", required=True, type=path_arg, help="folder holding imagenet/ and the shift sets (CoOp layout)")
    add_list_argument(p, "--targets", default=SHIFT_SETS, metavar="NAME",
                      help=f"shifted test sets, from {','.join(SHIFT_SETS)} (repeatable, comma-separated)")
    p.add_argument("--shots", type=int, default=16, help="ImageNet support images per class")
    add_list_argument(p, "--seeds", item=int, default=DEFAULT_SEEDS, metavar="S", help="few-shot sampling seeds")
    add_list_argument(p, "--methods", choices=METHOD_NAMES, default=DEFAULT_METHODS, metavar="NAME",
                      help=f"methods, from {','.join(METHOD_NAMES)}")
    p.add_argument("--validation", choices=["heldout", "test"], default=None,
                   help="ImageNet tuning set (default: heldout, carved from train, disjoint from the support)")
    p.add_argument("--allow-test-tuning", action="store_true", help="permit --validation test (what the paper did; recorded)")
    p.add_argument("--augment-passes", type=int, default=10, help="augmented views averaged per cache key")
    p.add_argument("--out", required=True, type=out_folder("the shift results"),
                   help="folder for shift.json and shift.md")
    add_method_option_args(p, "each seed orders them")
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...experiment.grid import RunConfig
    from ...experiment.shift import open_shift, run_shift, shift_markdown
    from ...methods.names import require_adapter
    from ..output import progress_setting

    cfg = RunConfig(root=args.root, datasets=["ImageNet"], shots=[args.shots], seeds=args.seeds,
                    methods=args.methods, validation=args.validation,
                    allow_test_tuning=args.allow_test_tuning, augment_passes=args.augment_passes,
                    skip_unreadable=args.skip_unreadable, proker_views=args.proker_views,
                    proker_grid=args.proker_grid, ape_config=args.ape_config, tipf_config=args.tipf_config,
                    tipf_batch=args.tipf_batch, clap_batch=args.clap_batch, tda_config=args.tda_config)
    require_adapter(cfg.methods, args.adapter is not None)  # the cheap checks, before the model loads
    opened = open_shift(cfg, args.targets)
    result = run_shift(cfg, make_extractor(args), args.out, targets=args.targets, device=args.device,
                       progress=progress_setting(args), opened=opened)
    print(shift_markdown(result))
    print(f"wrote {args.out}/shift.json and shift.md (add it to a report: clipimo report --shift {args.out}/shift.json)")
    return 0
