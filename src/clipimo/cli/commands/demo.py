"""``clipimo demo``: the whole pipeline on embedded real photographs (random init unless weights are given)."""
from __future__ import annotations

import argparse

from ..args import add_device_arg, add_figure_args
from ..config import out_folder, source_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train an adapter, evaluate every method, diagnose and report on embedded sample photographs",
        description="Runs adapter training, feature extraction, few-shot evaluation of every method (both "
        "variants), the overlap diagnostics and the report on crops of scikit-image's sample photographs. "
        "Without --pretrained (or $CLIPIMO_PRETRAINED) the backbone is a small random-init ViT and every "
        "number is meaningless: it then only shows that the pipeline works.",
    )
    p.add_argument("--out", default="demo_out", type=out_folder("the demo"), help="output folder")
    p.add_argument("--model", default=None, type=source_arg,
                   help="open_clip model (default: $CLIPIMO_MODEL, else ViT-B-16 with weights, clipimo-tiny-vit without)")
    p.add_argument("--pretrained", default=None, type=source_arg,
                   help="pretrained tag or weights file (default: $CLIPIMO_PRETRAINED, else none: random init)")
    add_device_arg(p, "where the adapter is trained and images are encoded")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--quick", action="store_true", help="reduced sizes (CI): 1 and 4 shots, 1 seed, 2 augmentation passes")
    add_figure_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...experiment.demo import DemoSettings, run_demo
    from ...report.style import FigureOptions
    from ..output import progress_setting

    options = FigureOptions.parse(args.format, args.dpi)
    run_demo(args.out, model=args.model, pretrained=args.pretrained, device=args.device,
             settings=DemoSettings.quick() if args.quick else DemoSettings(), workers=args.workers,
             progress=progress_setting(args), figures=options)
    return 0
