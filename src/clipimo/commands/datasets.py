"""``clipimo datasets``: check a data root against the benchmarks; build the Open Images subset."""
from __future__ import annotations

import argparse
import json

from ..data.registry import DATASETS, get_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datasets", help="inspect benchmark data; build generic sets")
    sub = parser.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check", help="per dataset: found or missing, split sizes vs expected, layout hints",
        description="Known datasets: " + ", ".join(DATASETS),
    )
    check.add_argument("--root", required=True, help="data root holding caltech-101/, imagenet/, ...")
    check.add_argument("--dataset", nargs="+", metavar="NAME",
                       help="only these datasets (default: all; missing ones then fail)")
    check.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    check.set_defaults(func=run_check)

    oi = sub.add_parser(
        "openimages", help="pick N classes x M images from local Open Images metadata into a CSV",
    )
    oi.add_argument("--class-descriptions", required=True,
                    help="class-descriptions CSV (LabelName,DisplayName; header optional)")
    oi.add_argument("--labels", required=True,
                    help="image-level labels CSV (ImageID,Source,LabelName,Confidence)")
    oi.add_argument("--images", required=True, help="folder of <ImageID>.jpg files")
    oi.add_argument("--out", required=True, help="CSV to write (path,label)")
    oi.add_argument("--classes", type=int, required=True, help="number of classes N")
    oi.add_argument("--per-class", type=int, required=True, help="images per class M")
    oi.add_argument("--seed", type=int, default=0)
    oi.set_defaults(func=run_openimages)


def run_check(args: argparse.Namespace) -> int:
    """Exit 1 when any dataset is broken or off-count, or a dataset asked for is missing."""
    from .._io import write_json
    from ..data.check import MISSING, OK, check_datasets, format_report

    names = [get_spec(name).name for name in args.dataset] if args.dataset else None
    results = check_datasets(args.root, names)
    print(format_report(results))
    if args.json:
        write_json(args.json, results)
    bad = [r for r in results
           if r["status"] not in (OK, MISSING) or (names and r["status"] == MISSING)]
    return 1 if bad else 0


def run_openimages(args: argparse.Namespace) -> int:
    from ..data.openimages import build_open_images_subset

    summary = build_open_images_subset(
        args.class_descriptions, args.labels, args.images, args.out,
        n_classes=args.classes, images_per_class=args.per_class, seed=args.seed,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "classes"}, indent=2))
    return 0
