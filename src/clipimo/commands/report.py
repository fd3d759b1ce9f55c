"""``clipimo report``: Markdown report with tables and PNG plots from a ``clipimo run`` results.json."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown report + accuracy-vs-shots and overlap plots from a results.json",
        description="Writes OUT/report.md (accuracy tables per shot count, IMO gains, chosen "
                    "hyper-parameters, distribution shift when present, overlap figures) and the PNGs "
                    "it links under OUT/plots/.",
    )
    p.add_argument("--results", required=True, help="results.json written by 'clipimo run'")
    p.add_argument("--overlap", nargs="+", default=[], metavar="OVERLAP_JSON",
                   help="overlap.json file(s) written by 'clipimo overlap' to include")
    p.add_argument("--shift", default=None, metavar="SHIFT_JSON", help="shift.json written by 'clipimo shift' to include")
    p.add_argument("--out", required=True, help="output folder (report.md, plots/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..log import logger, warn_random_init
    from ..report import build_report, load_overlap, load_results, load_shift

    results = load_results(args.results)
    if args.shift:
        results["shift"] = load_shift(args.shift)
    overlaps = [(str(path), load_overlap(path)) for path in args.overlap]
    path = build_report(results, args.out, overlaps, results_path=str(args.results))
    if results["meta"].get("random_init"):
        warn_random_init()
    if results["meta"].get("tuned_on_test"):
        logger.warning("hyper-parameters were tuned on the test split (recorded in the report)")
    plots_dir = Path(args.out) / "plots"
    n_png = len(list(plots_dir.glob("*.png"))) if plots_dir.is_dir() else 0
    print(f"wrote {path} ({n_png} plot(s) in {plots_dir})")
    return 0
