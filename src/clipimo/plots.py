"""PNG figures: intra-modal overlap histograms and accuracy-vs-shots curves.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no GUI, no global
figure state) and written atomically through ``clipimo._io.atomic_path``. Every figure that rests
on a random-init backbone carries ``RANDOM_INIT_WARNING`` as a red banner.
"""
from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._io import atomic_path
from .log import RANDOM_INIT_WARNING

IMO_SUFFIX = "-imo"
# Base method -> colour; a method and its IMO variant share the colour (original solid, IMO dashed).
METHOD_COLOURS = {"zs": "#444444", "tip": "#1f77b4", "tipx": "#d62728", "gda": "#2ca02c"}
_EXTRA_COLOURS = ["#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
METHOD_ORDER = ["zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
PAIRED_COLOUR = "#1f77b4"
UNPAIRED_COLOUR = "#d62728"
OVERLAP_COLOUR = "#7f7f7f"


def slug(name: str) -> str:
    """File-name-safe lower-case form of a dataset name (``ImageNet-V2`` -> ``imagenet_v2``)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "unnamed"


def base_method(method: str) -> str:
    return method[: -len(IMO_SUFFIX)] if method.endswith(IMO_SUFFIX) else method


def is_imo(method: str) -> bool:
    return method.endswith(IMO_SUFFIX)


def order_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in canonical order, then unknown ones in first-seen order, variants after their base."""
    seen = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in seen]
    rest = [m for m in seen if m not in METHOD_ORDER]
    bases = list(dict.fromkeys(base_method(m) for m in rest))
    rest_sorted = [m for b in bases for m in (b, b + IMO_SUFFIX) if m in rest]
    return known + rest_sorted


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Line style per method: colour from the base method, solid for originals, dashed for IMO."""
    styles: dict[str, dict[str, Any]] = {}
    extra = iter(_EXTRA_COLOURS * 10)
    colours = dict(METHOD_COLOURS)
    for m in methods:
        b = base_method(m)
        if b not in colours:
            colours[b] = next(extra)
        imo = is_imo(m)
        styles[m] = {
            "color": colours[b],
            "linestyle": "--" if imo else (":" if b == "zs" else "-"),
            "marker": "s" if imo else "o",
            "markerfacecolor": "white" if imo else colours[b],
        }
    return styles


def _banner(fig: Figure, random_init: bool, top: float, fontsize: float = 7.5) -> float:
    """Add the random-init banner above the axes; returns the fraction of the height left for them."""
    if not random_init:
        return top
    width_in, height_in = fig.get_size_inches()
    text = textwrap.fill(RANDOM_INIT_WARNING, max(40, int(width_in * 72 / (fontsize * 0.62))))
    fig.text(0.5, 0.992, text, ha="center", va="top", fontsize=fontsize, color="white", fontweight="bold",
             bbox={"facecolor": "#c0392b", "edgecolor": "none", "boxstyle": "round,pad=0.4"})
    banner_pt = (text.count("\n") + 1) * fontsize * 1.3 + 14
    return top - banner_pt / (height_in * 72)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render ``fig`` to a PNG at ``path`` atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _pairs_text(stats: Mapping[str, Any]) -> str:
    n = stats.get("n_pairs", {})
    text = f"{n.get('paired', 0):,} paired / {n.get('unpaired', 0):,} unpaired pairs"
    if stats.get("mode") == "sampled":
        text += f", sampled {stats.get('sample_size', 0):,} of {stats.get('total_pairs', 0):,} (seed {stats.get('seed')})"
    else:
        text += ", exact"
    return text


def overlap_figure(record: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Paired vs unpaired similarity densities, original vs corrected side by side, overlap shaded.

    ``record`` is ``diagnostics.compare_streams``' output, optionally with ``random_init`` and
    ``source`` (``{"description": ...}``) as written to ``overlap.json``.
    """
    streams = [(name, record[name]) for name in ("original", "corrected") if record.get(name)]
    if not streams:
        raise ValueError("overlap record holds neither an 'original' nor a 'corrected' stream")
    bins = len(streams[0][1]["paired_density"])
    edges = np.linspace(-1.0, 1.0, bins + 1)
    random_init = bool(record.get("random_init"))
    fig = Figure(figsize=(5.2 * len(streams), 4.4 if random_init else 4.0))
    under = _banner(fig, random_init, 0.995)
    height_pt = fig.get_size_inches()[1] * 72
    top = under - 54 / height_pt  # room for the suptitle and the two-line panel titles
    axes = fig.subplots(1, len(streams), sharex=True, sharey=True, squeeze=False)[0]
    lo, hi = 1.0, -1.0
    for ax, (name, stats) in zip(axes, streams):
        p = np.asarray(stats["paired_density"], dtype=float)
        q = np.asarray(stats["unpaired_density"], dtype=float)
        ax.stairs(np.minimum(p, q), edges, fill=True, color=OVERLAP_COLOUR, alpha=0.45,
                  label=f"overlap area {_fmt(stats.get('overlap'))}")
        ax.stairs(p, edges, color=PAIRED_COLOUR, linewidth=1.4, label="paired (same class)")
        ax.stairs(q, edges, color=UNPAIRED_COLOUR, linewidth=1.4, label="unpaired (different class)")
        nz = np.nonzero((p > 0) | (q > 0))[0]
        if len(nz):
            lo, hi = min(lo, edges[nz[0]]), max(hi, edges[nz[-1] + 1])
        ax.set_title(
            f"{name}: overlap {_fmt(stats.get('overlap'))}, BC {_fmt(stats.get('bhattacharyya'))}, "
            f"var {_fmt(stats.get('variance'), '.3g')}\n{_pairs_text(stats)}",
            fontsize=8.5,
        )
        ax.set_xlabel("cosine similarity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    axes[0].set_ylabel("density")
    if hi > lo:
        margin = max(0.02, 0.05 * (hi - lo))
        axes[0].set_xlim(max(-1.0, lo - margin), min(1.0, hi + margin))
    source = (record.get("source") or {}).get("description")
    fig.suptitle(title or ("Intra-modal overlap" + (f": {source}" if source else "")), fontsize=10,
                 y=under - 4 / height_pt, va="top")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=top, wspace=0.08)
    return save_figure(fig, path)


def accuracy_figure(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str,
    methods: Sequence[str] | None = None,
    random_init: bool = False,
) -> Path:
    """Top-1 accuracy vs shots, one line per method (mean over seeds, error bars = std over seeds).

    ``rows`` are summary rows ``{"shots", "method", "mean", "std", ...}`` of a single dataset.
    """
    if not rows:
        raise ValueError(f"no accuracy rows to plot for {title!r}")
    methods = list(methods) if methods is not None else order_methods(r["method"] for r in rows)
    methods = [m for m in methods if any(r["method"] == m for r in rows)]
    styles = method_styles(methods)
    shots = sorted({int(r["shots"]) for r in rows})
    log_x = all(s > 0 for s in shots) and len(shots) > 1
    fig = Figure(figsize=(6.4, 4.9 if random_init else 4.4))
    top = _banner(fig, random_init, 0.995) - 26 / (fig.get_size_inches()[1] * 72)
    ax = fig.subplots()
    n = len(methods)
    for k, m in enumerate(methods):
        pts = sorted((int(r["shots"]), float(r["mean"]), float(r.get("std") or 0.0)) for r in rows if r["method"] == m)
        x = np.array([p[0] for p in pts], dtype=float)
        if log_x:  # a small dodge, so error bars of neighbouring methods do not hide each other
            x = x * 2.0 ** (0.035 * (k - (n - 1) / 2))
        ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], label=m, capsize=3, linewidth=1.5,
                    markersize=5, elinewidth=1, **styles[m])
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.minorticks_off()
    ax.set_xlabel("shots per class")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if n > 4 else 1, loc="best")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=top)
    return save_figure(fig, path)


def accuracy_plots(
    summary: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    random_init: bool = False,
    datasets: Sequence[str] | None = None,
) -> dict[str, Path]:
    """One ``acc_<dataset>.png`` per dataset and ``acc_average.png`` (summary rows with dataset
    "average"), in ``out_dir``; returns ``{dataset or "average": path}``."""
    out_dir = Path(out_dir)
    names = list(datasets) if datasets is not None else list(dict.fromkeys(r["dataset"] for r in summary))
    if "average" in {r["dataset"] for r in summary} and "average" not in names:
        names.append("average")
    written: dict[str, Path] = {}
    used: set[str] = set()
    for name in names:
        rows = [r for r in summary if r["dataset"] == name]
        if not rows:
            continue
        stem = slug(name)
        while stem in used:
            stem += "_"
        used.add(stem)
        title = "Average over datasets" if name == "average" else str(name)
        written[name] = accuracy_figure(rows, out_dir / f"acc_{stem}.png", title + ": accuracy vs shots",
                                        methods, random_init)
    return written
