"""``clipimo results``: join several runs into one CSV, or export a run to CLIP_benchmark JSON."""
from __future__ import annotations

import argparse

from ..config import out_file, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="merge runs into one CSV table; export cells to CLIP_benchmark JSON")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    merge = actions.add_parser(
        "merge", help="one CSV of the per-cell rows of several runs",
        description="Rows of every cell and method of each run (metrics in percent, chosen hyper-parameters, "
                    "model, pretrained, adapter), with a 'run' column naming the folder they came from.")
    merge.add_argument("runs", nargs="+", metavar="RUN_DIR", type=path_arg, help="'clipimo run' output folders (or their results.json)")
    merge.add_argument("--out", required=True, type=out_file("the merged table", ".csv"), help="CSV file to write")
    merge.set_defaults(func=run_merge)
    export = actions.add_parser(
        "export", help="write RUN_DIR/clip_benchmark/*.json (also written by every 'clipimo run')",
        description="One CLIP_benchmark-shaped JSON per cell and method: dataset, model, pretrained, task, "
                    "metrics {acc1, acc5, mean_per_class_recall} as fractions.")
    export.add_argument("runs", nargs="+", metavar="RUN_DIR", type=path_arg, help="'clipimo run' output folders")
    export.set_defaults(func=run_export)


def run_merge(args: argparse.Namespace) -> int:
    from ...report.export import merge_runs
    from ...utils import fileio

    text = merge_runs(args.runs)
    fileio.write_text(args.out, text)
    print(f"wrote {args.out} ({text.count(chr(10)) - 1} rows from {len(args.runs)} run(s))")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ...report.export import write_clip_benchmark
    from ...report.records import read_results, run_file

    for run in args.runs:
        file = run_file(run)
        folder = write_clip_benchmark(file.parent, read_results(file))
        print(f"wrote {folder}")
    return 0
