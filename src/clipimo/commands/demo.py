"""``clipimo demo``: the whole pipeline on embedded real photographs (random init unless weights are given)."""
from __future__ import annotations

import argparse



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train an adapter, evaluate every method, diagnose and report on embedded sample photographs",
        description="Runs adapter training, feature extraction, few-shot evaluation of every method (both "
        "variants), the overlap diagnostics and the report on crops of scikit-image's sample photographs. "
        "Without --pretrained (or $CLIPIMO_PRETRAINED) the backbone is a small random-init ViT and every "
        "number is meaningless: it then only shows that the pipeline works.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--model", default=None, help="open_clip model (default ViT-B-16 with weights, clipimo-tiny-vit without; or $CLIPIMO_MODEL)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file (or $CLIPIMO_PRETRAINED); none: random init")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--quick", action="store_true", help="reduced sizes (CI): 1 and 4 shots, 1 seed, 2 augmentation passes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import progress_setting
    from ..demo import DemoSettings, run_demo

    run_demo(args.out, model=args.model, pretrained=args.pretrained, device=args.device,
             settings=DemoSettings.quick() if args.quick else DemoSettings(), workers=args.workers,
             progress=progress_setting(args))
    return 0
