"""``clipimo datasets``: check a data root against the benchmarks; build the Open Images subset."""
from __future__ import annotations

import argparse
import json

from ...data.registry import DATASETS, get_spec
from ...errors import ClipimoError
from ..args import add_dataset_arg, add_json_arg
from ..config import out_file, path_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datasets", help="inspect benchmark data; build generic sets")
    sub = parser.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check", help="per dataset: found or missing, split sizes vs expected, layout hints",
        description="Known datasets: " + ", ".join(DATASETS),
    )
    check.add_argument("--root", required=True, type=path_arg, help="data root holding caltech-101/, imagenet/, ...")
    add_dataset_arg(check, "only these datasets, repeatable and comma-separated (default: all; missing ones then fail)")
    add_json_arg(check, "the per-dataset results")
    check.set_defaults(func=run_check)

    oi = sub.add_parser(
        "openimages", help="write the path,label training CSV from the paper's Open Images list, or pick "
                           "N classes x M images from local Open Images metadata",
    )
    oi.add_argument("--list", type=path_arg, help="the paper's list: CSV with columns ImageID, DisplayName, type "
                                   "(instead of --class-descriptions/--labels/--classes/--per-class)")
    oi.add_argument("--skip-missing", action="store_true",
                    help="with --list: leave out listed images without a file (recorded in the summary) instead of failing")
    oi.add_argument("--class-descriptions", type=path_arg, help="class-descriptions CSV (LabelName,DisplayName; header optional)")
    oi.add_argument("--labels", type=path_arg, help="image-level labels CSV (ImageID,Source,LabelName,Confidence)")
    oi.add_argument("--images", required=True, type=path_arg, help="folder of <ImageID>.jpg files (or <type>/<ImageID>.jpg with --list)")
    oi.add_argument("--out", required=True, type=out_file("a path,label list", ".csv"),
                    help="CSV to write (path,label)")
    oi.add_argument("--classes", type=int, help="number of classes N")
    oi.add_argument("--per-class", type=int, help="images per class M")
    oi.add_argument("--seed", type=int, default=0, help="seed of the random choice of classes and images")
    add_json_arg(oi, "the summary (with any skipped images)")
    oi.set_defaults(func=run_openimages)


def run_check(args: argparse.Namespace) -> int:
    """Exit 1 when any dataset is broken or off-count, or a dataset asked for is missing."""
    from ...data.check import MISSING, OK, check_datasets, format_report
    from ..output import write_json_output

    names = [get_spec(name).name for name in args.dataset] if args.dataset else None
    results = check_datasets(args.root, names)
    print(format_report(results))
    if args.json:
        write_json_output(args.json, results)
    bad = [r for r in results
           if r["status"] not in (OK, MISSING) or (names and r["status"] == MISSING)]
    return 1 if bad else 0


def run_openimages(args: argparse.Namespace) -> int:
    from ...data.openimages import build_open_images_subset, convert_paper_list
    from ..output import write_json_output

    subset = {"--class-descriptions": args.class_descriptions, "--labels": args.labels,
              "--classes": args.classes, "--per-class": args.per_class}
    if args.list:
        given = [flag for flag, value in subset.items() if value is not None]
        if given:
            raise ClipimoError(f"--list takes the paper's list as it is: drop {', '.join(given)}")
        summary = convert_paper_list(args.list, args.images, args.out, skip_missing=args.skip_missing)
    else:
        absent = [flag for flag, value in subset.items() if value is None]
        if absent or args.skip_missing:
            raise ClipimoError("give either --list (the paper's list) or all of "
                               f"{', '.join(subset)}" + (f"; missing {', '.join(absent)}" if absent else ""))
        summary = build_open_images_subset(
            args.class_descriptions, args.labels, args.images, args.out,
            n_classes=args.classes, images_per_class=args.per_class, seed=args.seed,
        )
    if args.json:
        write_json_output(args.json, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "classes"}, indent=2))
    return 0
