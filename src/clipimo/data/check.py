"""``datasets check``: what a data root holds, against what the benchmarks need."""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import ClipimoError
from .benchmarks import SPLITS, load_dataset
from .registry import DATASETS, get_spec

OK, MISMATCH, ERROR, MISSING = "ok", "count-mismatch", "error", "missing"


def check_dataset(name: str, root: str | os.PathLike) -> dict:
    """Status of one dataset: ok / count-mismatch / error / missing, with counts and details."""
    spec = get_spec(name)
    result: dict = {"dataset": spec.name, "classes_expected": spec.num_classes,
                    "counts_expected": spec.counts}
    if spec.find_dir(root) is None:
        return {**result, "status": MISSING, "layout": spec.layout(root)}
    try:
        splits = load_dataset(spec.name, root)
    except ClipimoError as err:
        result.update(status=ERROR, error=str(err))
        if "expected layout" not in str(err):
            result["layout"] = spec.layout(root)
        return result
    counts = splits.counts()
    result.update(path=splits.root, classes=splits.num_classes, counts=counts)
    if spec.counts is not None and counts != spec.counts:
        diffs = [f"{s} {counts[s]} != {spec.counts[s]}" for s in SPLITS if counts[s] != spec.counts[s]]
        return {**result, "status": MISMATCH,
                "error": "split sizes differ from the standard CoOp split: " + ", ".join(diffs)}
    return {**result, "status": OK}


def check_datasets(root: str | os.PathLike, names: Sequence[str] | None = None) -> list[dict]:
    """``check_dataset`` for each of ``names`` (default: every known dataset)."""
    return [check_dataset(name, root) for name in (names or list(DATASETS))]


def format_report(results: Sequence[dict]) -> str:
    """A table (one row per dataset) followed by the details of everything not ok."""
    def count(result: dict, split: str) -> str:
        got = result.get("counts", {}).get(split, "-")
        want = (result["counts_expected"] or {}).get(split, "?")
        return f"{got}/{want}"

    header = ("dataset", "status", "classes", "train", "val", "test")
    rows = [header] + [
        (r["dataset"], r["status"], f"{r.get('classes', '-')}/{r['classes_expected']}",
         count(r, "train"), count(r, "val"), count(r, "test"))
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("(counts are found/expected; '?' = no standard split size to compare)")
    for r in results:
        if r["status"] == OK:
            continue
        lines.append("")
        lines.append(f"{r['dataset']}: {r['status']}")
        if "error" in r:
            lines.append("  " + r["error"].replace("\n", "\n  "))
        if "layout" in r:
            lines.append("  expected layout:")
            lines.append("    " + r["layout"].replace("\n", "\n    "))
    return "\n".join(lines)
