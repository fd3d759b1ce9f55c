"""``clipimo report``: Markdown report with tables and figures from a ``clipimo run`` results.json."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..args import add_figure_args, parse_xlim
from ..config import out_folder, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown report + accuracy, IMO-gain and overlap figures from a results.json",
        description="Writes OUT/report.md (top-1 tables per shot count, top-5 and mean per-class recall, IMO "
                    "gains, chosen hyper-parameters, distribution shift when present, overlap figures) and the "
                    "figures it links under OUT/plots/ (accuracy grid, accuracy and IMO gain vs shots per "
                    "dataset and averaged).",
    )
    p.add_argument("--results", required=True, type=path_arg, help="a 'clipimo run' output folder or its results.json")
    p.add_argument("--overlap", nargs="+", default=[], metavar="OVERLAP_JSON", type=path_arg,
                   help="overlap.json file(s) written by 'clipimo overlap' to include")
    p.add_argument("--shift", default=None, metavar="SHIFT_JSON", type=path_arg, help="a 'clipimo shift' output folder or its shift.json, to include (same model as the results)")
    p.add_argument("--out", required=True, type=out_folder("the report"), help="output folder (report.md, plots/)")
    p.add_argument("--overlap-xlim", default=None, metavar="LOW,HIGH",
                   help="fixed x-range of every overlap figure, e.g. -0.2,1 (default: each figure's occupied range)")
    add_figure_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...report.builder import build_report
    from ...report.overlap_file import load_overlap
    from ...report.records import check_shift_matches, read_results, read_shift
    from ...report.style import FigureOptions
    from ...utils.log import logger, warn_random_init

    options = FigureOptions.parse(args.format, args.dpi)
    xlim = parse_xlim(args.overlap_xlim)
    results = read_results(args.results)
    if args.shift:
        shift = read_shift(args.shift)
        check_shift_matches(results, shift, str(args.shift))
        results["shift"] = shift
    overlaps = [(str(path), load_overlap(path)) for path in args.overlap]
    path = build_report(results, args.out, overlaps, results_path=str(args.results), options=options,
                        overlap_xlim=xlim)
    if results["meta"].get("random_init"):
        warn_random_init()
    if results["meta"].get("tuned_on_test"):
        logger.warning("hyper-parameters were tuned on the test split (recorded in the report)")
    plots_dir = Path(args.out) / "plots"
    n_files = len([f for f in plots_dir.iterdir() if f.suffix.lstrip(".") in options.formats]) if plots_dir.is_dir() else 0
    print(f"wrote {path} ({n_files} figure file(s) in {plots_dir}: {', '.join(options.formats)})")
    return 0
