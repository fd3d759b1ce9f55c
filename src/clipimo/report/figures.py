"""The figures of a run and of an overlap record: accuracy vs shots (one dataset, or a grid over
all), IMO gain vs shots, and per feature stream the same-/different-class similarity densities.

Style, captions and output formats come from :mod:`clipimo.report.style`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..defaults import MAX_OVERLAP_NOISE
from ..methods.names import order_methods
from .records import is_random_init
from .style import (
    COLUMN_WIDTH_IN,
    PAGE_WIDTH_IN,
    FigureOptions,
    caption,
    identity_text,
    method_styles,
    place_axes,
    save_figure,
    slug,
    spread_text,
    style,
    watermark,
)

SAME_COLOUR = "#0072B2"       # Okabe-Ito blue / vermillion: distinguishable with colour-vision deficiency
DIFFERENT_COLOUR = "#D55E00"
OVERLAP_COLOUR = "#7F7F7F"
GAIN_X_LABEL = "shots per class"
Written = dict[str, Path]


# ---- accuracy and gain vs shots ------------------------------------------------------------------

def _shots_axis(ax: Axes, shots: Sequence[int]) -> bool:
    log_x = all(s > 0 for s in shots) and len(shots) > 1
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    return log_x


def _spread(row: Mapping[str, Any]) -> float:
    """The std of a summary row, NaN (nothing drawn) when it has none: a single seed."""
    std = row.get("std")
    return np.nan if std is None or (row.get("n") or 2) < 2 else float(std)


def _lines(ax: Axes, rows: Sequence[Mapping[str, Any]], methods: Sequence[str], styles: Mapping[str, Any],
           label=lambda m: m) -> None:
    """One error-bar line per method (mean, std) over shots; dodged a little on a log axis. A point
    without a spread (one seed) gets no error bar, not a zero-length one with caps."""
    shots = sorted({int(r["shots"]) for r in rows})
    log_x = _shots_axis(ax, shots)
    n = len(methods)
    for k, m in enumerate(methods):
        pts = sorted((int(r["shots"]), float(r["mean"]), _spread(r)) for r in rows if r["method"] == m)
        if not pts:
            continue
        x = np.array([p[0] for p in pts], dtype=float)
        if log_x:  # a small dodge, so error bars of neighbouring methods do not hide each other
            x = x * 2.0 ** (0.04 * (k - (n - 1) / 2))
        ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], label=label(m), capsize=2,
                    elinewidth=0.8, **styles[m])


def _legend_below(fig: Figure, ax: Axes, ncol: int, bottom_in: float) -> float:
    """A legend under the axes, above the caption; returns its top in inches from the bottom."""
    handles, labels = ax.get_legend_handles_labels()
    rows = math.ceil(len(labels) / ncol)
    height = 0.16 * rows + 0.08
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, handlelength=2.2,
               columnspacing=1.0, bbox_to_anchor=(0.5, bottom_in / fig.get_size_inches()[1]))
    return bottom_in + height


def accuracy_figure(rows: Sequence[Mapping[str, Any]], stem: str | os.PathLike, title: str,
                    meta: Mapping[str, Any], methods: Sequence[str] | None = None,
                    options: FigureOptions = FigureOptions(), ylabel: str = "top-1 accuracy (%)") -> Written:
    """Accuracy vs shots of one dataset (or the average), one line per method.

    ``rows`` are summary rows ``{"shots", "method", "mean", "std", "n"}``; ``meta`` is the results'
    meta (backbone, adapter, random_init) for the caption.
    """
    if not rows:
        raise ValueError(f"no accuracy rows to plot for {title!r}")
    methods = [m for m in (methods or order_methods(r["method"] for r in rows)) if any(r["method"] == m for r in rows)]
    random_init = is_random_init(meta)
    with style():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 3.3))
        ax = fig.subplots()
        _lines(ax, rows, methods, method_styles(methods))
        ax.set_xlabel("shots per class")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if random_init:
            watermark(ax)
        cap = caption(fig, [f"Test split; {spread_text(r.get('n') for r in rows)}.", identity_text(meta)], random_init)
        legend_top = _legend_below(fig, ax, 4, cap + 0.02)
        place_axes(fig, top_in=0.25, bottom_in=legend_top + 0.38)
    return save_figure(fig, stem, options)


def gain_figure(gains: Sequence[Mapping[str, Any]], stem: str | os.PathLike, title: str,
                meta: Mapping[str, Any], options: FigureOptions = FigureOptions()) -> Written:
    """IMO gain (X-imo minus X, percentage points) vs shots, one line per base method X."""
    if not gains:
        raise ValueError(f"no IMO gains to plot for {title!r}")
    bases = order_methods(r["method"] for r in gains)
    random_init = is_random_init(meta)
    with style():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 3.0))
        ax = fig.subplots()
        ax.axhline(0.0, color="#555555", linewidth=0.8, zorder=0)
        _lines(ax, gains, bases, method_styles(bases), label=lambda b: f"{b}-imo − {b}")
        ax.set_xlabel(GAIN_X_LABEL)
        ax.set_ylabel("IMO gain (pp)")  # the long form did not fit the axes' height: the caption spells it out
        ax.set_title(title)
        if random_init:
            watermark(ax)
        spread = spread_text(r.get("n") for r in gains)
        cap = caption(fig, [f"Per seed: X-imo minus X on the same support set, in percentage points (pp); {spread}.",
                            identity_text(meta)], random_init)
        legend_top = _legend_below(fig, ax, 3 if len(bases) <= 3 else 2, cap + 0.02)
        place_axes(fig, top_in=0.25, bottom_in=legend_top + 0.38)
    return save_figure(fig, stem, options)


def correction_gain_figure(rows: Sequence[Mapping[str, Any]], stem: str | os.PathLike, title: str,
                           meta: Mapping[str, Any], options: FigureOptions = FigureOptions()) -> Written:
    """Grouped bars: per method, the gain of each correction's corrected-stream variant over the
    method on original features (percentage points, mean ± std over seeds). ``rows`` have
    ``"method"`` = ``(method, correction)``, ``"mean"``, ``"std"`` and ``"n"``."""
    if not rows:
        raise ValueError(f"no correction rows to plot for {title!r}")
    methods = list(dict.fromkeys(r["method"][0] for r in rows))
    corrections = list(dict.fromkeys(r["method"][1] for r in rows))
    index = {tuple(r["method"]): r for r in rows}
    random_init = is_random_init(meta)
    with style():
        fig = Figure(figsize=(max(COLUMN_WIDTH_IN, 0.9 * len(methods) + 1.2), 3.0))
        ax = fig.subplots()
        width = 0.8 / len(corrections)
        colours = method_styles([f"c{j}" for j in range(len(corrections))])
        for j, corr in enumerate(corrections):
            recs = [index.get((m, corr)) for m in methods]
            x = np.arange(len(methods)) + (j - (len(corrections) - 1) / 2) * width
            ax.bar(x, [r["mean"] if r else np.nan for r in recs], width,
                   yerr=[_spread(r) if r else np.nan for r in recs], capsize=2, label=corr,
                   color=colours[f"c{j}"]["color"])
        ax.axhline(0.0, color="#555555", linewidth=0.8, zorder=0)
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels(methods)
        ax.set_ylabel("gain over original (pp)")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        if random_init:
            watermark(ax)
        cap = caption(fig, [f"Corrected-stream variant minus the method on original features, per seed; "
                            f"{spread_text(r.get('n') for r in rows)}.", identity_text(meta)], random_init)
        legend_top = _legend_below(fig, ax, len(corrections), cap + 0.02)
        place_axes(fig, top_in=0.25, bottom_in=legend_top + 0.38)
    return save_figure(fig, stem, options)


def accuracy_grid(summary: Sequence[Mapping[str, Any]], stem: str | os.PathLike, datasets: Sequence[str],
                  meta: Mapping[str, Any], methods: Sequence[str] | None = None,
                  options: FigureOptions = FigureOptions()) -> Written:
    """Accuracy vs shots of every dataset of a run (and the average) as one grid of small panels,
    two columns wide, one shared legend."""
    names = [d for d in datasets if any(r["dataset"] == d for r in summary)]
    if any(r["dataset"] == "average" for r in summary) and "average" not in names:
        names.append("average")
    if not names:
        raise ValueError("no datasets to plot")
    methods = [m for m in (methods or order_methods(r["method"] for r in summary))
               if any(r["method"] == m for r in summary)]
    styles = method_styles(methods)
    random_init = is_random_init(meta)
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    with style():
        fig = Figure(figsize=(PAGE_WIDTH_IN, 1.75 * nrow + 1.0))
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for ax, name in zip(axes, names):
            _lines(ax, [r for r in summary if r["dataset"] == name], methods, styles)
            ax.set_title("Average over datasets" if name == "average" else str(name), fontsize=8)
            ax.tick_params(labelsize=7)
        if random_init:
            watermark(axes[0])
        for ax in axes[len(names):]:
            ax.set_visible(False)
        for ax in axes[::ncol]:
            ax.set_ylabel("top-1 (%)")
        for ax in axes[:len(names)][-ncol:]:
            ax.set_xlabel("shots per class")
        cap = caption(fig, [f"Top-1 test accuracy; {spread_text(r.get('n') for r in summary)}.",
                            identity_text(meta)], random_init)
        legend_top = _legend_below(fig, axes[0], min(7, len(methods)), cap + 0.02)
        place_axes(fig, top_in=0.2, bottom_in=legend_top + 0.38, left_in=0.5, hspace=0.55, wspace=0.28)
    return save_figure(fig, stem, options)


# ---- overlap -------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _change(record: Mapping[str, Any], key: str) -> str:
    o = (record.get("original") or {}).get(key)
    c = (record.get("corrected") or {}).get(key)
    if c is None or o is None:
        return _fmt(o)
    return f"{o:.3f} → {c:.3f} ({c - o:+.3f})"


def _pairs_text(stats: Mapping[str, Any], bins: Mapping[str, Any]) -> str:
    n = stats.get("n_pairs", {})
    text = f"{n.get('paired', 0):,} same-class / {n.get('unpaired', 0):,} different-class pairs"
    if stats.get("mode") == "sampled":
        text += f", sampled {stats.get('sample_size', 0):,} of {stats.get('total_pairs', 0):,} (seed {stats.get('seed')})"
    else:
        text += ", exact"
    rule = bins.get("rule", "fixed")
    return text + f"; {bins['count']} bins over [{bins['low']:.2f}, {bins['high']:.2f}] ({rule})"


def few_pairs_warning(record: Mapping[str, Any]) -> str | None:
    """A sentence for an overlap record whose pairs are too few for its overlap to mean anything
    (a stream's ``overlap_noise`` above ``MAX_OVERLAP_NOISE``), else None."""
    noisy = [s for name in ("original", "corrected")
             if (s := record.get(name)) and (s.get("overlap_noise") or 0) > MAX_OVERLAP_NOISE]
    if not noisy:
        return None
    n, noise = noisy[0]["n_pairs"], min(noisy[0]["overlap_noise"], 1.0)
    return (f"too few pairs for a meaningful overlap: with {n['paired']:,} same-class and {n['unpaired']:,} "
            f"different-class pairs on {record['bins']['count']} bins, differences below {noise:.2f} are sampling "
            f"noise (two samples of one distribution read an overlap of about {1 - noise:.2f}); use more images "
            "per class")


def _bins_of(record: Mapping[str, Any], count: int) -> dict[str, Any]:
    """The record's bins; a record from before bins over the data's range has the fixed [-1, 1] ones."""
    return {"low": -1.0, "high": 1.0, **(record.get("bins") or {}), "count": count}


def _x_range(densities: Sequence[np.ndarray], edges: np.ndarray, xlim: tuple[float, float] | None) -> tuple[float, float]:
    """The fixed range if given, else the occupied bins with a margin."""
    if xlim is not None:
        return xlim
    occupied = np.nonzero(np.any(np.stack(densities) > 0, axis=0))[0]
    lo, hi = (edges[occupied[0]], edges[occupied[-1] + 1]) if len(occupied) else (edges[0], edges[-1])
    margin = max(0.01, 0.04 * (hi - lo))
    return lo - margin, hi + margin


def overlap_figure(record: Mapping[str, Any], stem: str | os.PathLike, title: str | None = None,
                   options: FigureOptions = FigureOptions(), xlim: tuple[float, float] | None = None) -> Written:
    """Per stream (original, corrected) one panel: the same-class and different-class similarity
    densities on one axis with their intersection shaded, whose area is the overlap in the title.

    The caption states the pairs, the bins (over the data's range), the sampling noise when the
    pairs are too few, the backbone and the adapter. ``xlim`` fixes the x-range (to compare datasets
    or backbones); without it the occupied range is shown. ``record`` is
    ``clipimo.overlap.stats.compare_streams``' output, optionally with the provenance keys of
    ``overlap.json`` (``source``, ``backbone``, ``adapter``, ``random_init``).
    """
    streams = [(name, record[name]) for name in ("original", "corrected") if record.get(name)]
    if not streams:
        raise ValueError("overlap record holds neither an 'original' nor a 'corrected' stream")
    if xlim is not None and not (-1.0 <= xlim[0] < xlim[1] <= 1.0):
        raise ValueError(f"x-range must satisfy -1 <= low < high <= 1, got {xlim}")
    bins = _bins_of(record, len(streams[0][1]["paired_density"]))
    edges = np.linspace(bins["low"], bins["high"], bins["count"] + 1)
    dens = {(name, kind): np.asarray(stats[f"{kind}_density"], dtype=float)
            for name, stats in streams for kind in ("paired", "unpaired")}
    lo, hi = _x_range(list(dens.values()), edges, xlim)
    random_init = is_random_init(record)
    height = 1.6 * len(streams) + 1.9
    with style():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, height))
        axes = np.atleast_1d(fig.subplots(len(streams), 1, sharex=True, squeeze=False)).ravel()
        for ax, (name, stats) in zip(axes, streams):
            p, q = dens[(name, "paired")], dens[(name, "unpaired")]
            ax.stairs(np.minimum(p, q), edges, fill=True, color=OVERLAP_COLOUR, alpha=0.35, linewidth=0,
                      label="intersection: its area is the overlap")
            for kind, d, colour, text in (("paired", p, SAME_COLOUR, "same class"),
                                          ("unpaired", q, DIFFERENT_COLOUR, "different class")):
                ax.stairs(d, edges, color=colour, linewidth=1.1, linestyle="-" if kind == "paired" else "--",
                          label=f"{text}, mean {_fmt(stats.get(f'{kind}_mean_sim'))}")
            ax.set_ylim(0, None)
            ax.margins(y=0.08)
            ax.set_ylabel("density")
            ax.set_title(f"{name}: overlap {_fmt(stats.get('overlap'))}, BC {_fmt(stats.get('bhattacharyya'))}",
                         fontsize=8, loc="left")
            ax.grid(alpha=0.3)
            ax.legend(loc="best", frameon=False)
            if random_init:
                watermark(ax)
        axes[-1].set_xlim(lo, hi)
        axes[-1].set_xlabel("cosine similarity of image pairs")
        source = (record.get("source") or {}).get("description")
        head = title or ("Intra-modal overlap" + (f": {source}" if source else ""))
        fig.suptitle(f"{head}\nsame- vs different-class overlap {_change(record, 'overlap')}\n"
                     f"Bhattacharyya {_change(record, 'bhattacharyya')}", fontsize=8, y=1 - 0.04 / height, va="top")
        lines = [_pairs_text(streams[0][1], bins) + "."]
        warning = few_pairs_warning(record)
        if warning:
            lines.append(warning[0].upper() + warning[1:] + ".")
        lines.append(identity_text(record))
        if xlim is not None:
            width = edges[1] - edges[0]
            outside = max(float(d[(edges[1:] <= lo) | (edges[:-1] >= hi)].sum() * width) for d in dens.values())
            lines.insert(1, f"x-range fixed to [{xlim[0]:g}, {xlim[1]:g}]"
                         + (f"; up to {outside:.1%} of a density lies outside it." if outside > 0 else "."))
        cap = caption(fig, lines, random_init)
        place_axes(fig, top_in=0.85, bottom_in=cap + 0.38, left_in=0.5, hspace=0.35)
    return save_figure(fig, stem, options)


# ---- a run's figures -----------------------------------------------------------------------------

def _stems(names: Sequence[str], prefix: str, out_dir: Path) -> dict[str, Path]:
    used: set[str] = set()
    stems = {}
    for name in names:
        stem = slug(name)
        while stem in used:
            stem += "_"
        used.add(stem)
        stems[name] = out_dir / f"{prefix}_{stem}"
    return stems


def run_figures(summary: Sequence[Mapping[str, Any]], gains: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                meta: Mapping[str, Any], datasets: Sequence[str], methods: Sequence[str] | None = None,
                options: FigureOptions = FigureOptions()) -> dict[str, dict[str, Written]]:
    """Every figure of a run in ``out_dir``: ``acc_<dataset>``, ``gain_<dataset>`` (each dataset
    and "average") and ``acc_grid``. Returns ``{"accuracy": {name: files}, "gain": {...},
    "grid": {"all": files}}``."""
    out_dir = Path(out_dir)
    names = [d for d in datasets if d != "average"] + ["average"]
    out: dict[str, dict[str, Written]] = {"accuracy": {}, "gain": {}, "grid": {}}
    for name, stem in _stems(names, "acc", out_dir).items():
        rows = [r for r in summary if r["dataset"] == name]
        if rows:
            label = "Average over datasets" if name == "average" else str(name)
            out["accuracy"][name] = accuracy_figure(rows, stem, f"{label}: accuracy vs shots", meta, methods, options)
    for name, stem in _stems(names, "gain", out_dir).items():
        rows = [g for g in gains if g["dataset"] == name]
        if rows:
            label = "Average over datasets" if name == "average" else str(name)
            out["gain"][name] = gain_figure(rows, stem, f"{label}: IMO gain vs shots", meta, options)
    if len(out["accuracy"]) > 1:
        out["grid"]["all"] = accuracy_grid(summary, out_dir / "acc_grid", datasets, meta, methods, options)
    return out
