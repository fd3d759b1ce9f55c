"""``overlap.json``: the figures of ``diagnostics.compare_streams`` with their provenance, the
figure drawn from them, and their Markdown table."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ClipimoError
from ..utils import fileio
from ..utils.markdown import md_table
from ..version import __version__
from .figures import overlap_figure
from .style import FigureOptions

OVERLAP_FORMAT = "clipimo-overlap/1"


def overlap_file_record(src: dict[str, Any], figures: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """The overlap.json record: figures from ``diagnostics.compare_streams`` plus their provenance."""
    return {
        "format": OVERLAP_FORMAT,
        "source": src["source"],
        "backbone": src["backbone"],
        "adapter": src["adapter"],
        "random_init": src["random_init"],
        "n_items": int(len(src["labels"])),
        "n_classes": n_classes,
        "dim": int(np.asarray(src["original"]).shape[1]),
        **figures,
        "clipimo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_overlap(record: dict[str, Any], out: Path, title: str | None = None,
                  options: FigureOptions = FigureOptions(), xlim: tuple[float, float] | None = None) -> dict[str, Path]:
    """``out/overlap.json`` and its figure ``out/overlap.<format>``; returns ``{format: path}`` of the figure."""
    fileio.write_json(out / "overlap.json", record)
    return overlap_figure(record, out / "overlap", title=title, options=options, xlim=xlim)


def is_overlap_folder(folder: Path) -> bool:
    """Whether ``folder``'s overlap.json is a record written by ``clipimo overlap`` (its format)."""
    try:
        return fileio.read_json(folder / "overlap.json", "overlap").get("format") == OVERLAP_FORMAT
    except ClipimoError:
        return False


def load_overlap(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an ``overlap.json`` written by ``clipimo overlap``."""
    record = fileio.read_json(path, "overlap")
    if not record.get("original"):
        raise ClipimoError(f"overlap file {path}: missing key 'original' (is this an overlap.json from 'clipimo overlap'?)")
    for name in ("original", "corrected"):
        stats = record.get(name)
        if stats:
            for key in ("overlap", "bhattacharyya", "variance", "paired_density", "unpaired_density"):
                if key not in stats:
                    raise ClipimoError(f"overlap file {path}: {name!r} lacks key {key!r}")
    return record


def overlap_table(record: Mapping[str, Any]) -> str:
    """Markdown table of an overlap record: one row per stream, plus the change when both exist."""
    rows = []
    for name in ("original", "corrected"):
        s = record.get(name)
        if not s:
            continue
        n = s.get("n_pairs", {})
        mode = "exact" if s.get("mode") == "exact" else f"sampled {s.get('sample_size', 0):,} (seed {s.get('seed')})"
        rows.append([name, _fmt4(s.get("overlap")), _fmt4(s.get("bhattacharyya")), _fmtg(s.get("variance")),
                     f"{n.get('paired', 0):,}", f"{n.get('unpaired', 0):,}", mode])
    delta = record.get("delta")
    if delta:
        rows.append(["change", _fmt4(delta.get("overlap"), True), _fmt4(delta.get("bhattacharyya"), True),
                     _fmtg(delta.get("variance"), True), "", "", ""])
    return md_table(["Stream", "Overlap", "BC", "Variance", "Paired pairs", "Unpaired pairs", "Pairs"], rows,
                    ["l", "r", "r", "r", "r", "r", "l"])


def _fmt4(v: float | None, signed: bool = False) -> str:
    return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _fmtg(v: float | None, signed: bool = False) -> str:
    return "n/a" if v is None else (f"{v:+.4g}" if signed else f"{v:.4g}")
