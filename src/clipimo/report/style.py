"""Figure style and output shared by every clipimo figure, and the method colour scheme.

Figures are drawn at their printed size (3.5 in, one journal column; grids 7 in, two columns)
with 7-8.5 pt fonts, so they stay readable without rescaling. Each is built on a
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global figure state) and written
atomically in every requested format: PNG at ``dpi`` (recorded in the file), PDF with embedded
TrueType fonts and SVG with text kept as text. A caption under the axes names the backbone,
weights and adapter; a figure from a random-init backbone also carries a small corner
watermark and one caption line saying so.
"""
from __future__ import annotations

import contextlib
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend

from ..defaults import DEFAULT_DPI
from ..defaults import FIGURE_FORMATS as FORMATS
from ..errors import ClipimoError
from ..methods.names import base_method, is_imo
from ..utils.fileio import atomic_path

COLUMN_WIDTH_IN = 3.5
PAGE_WIDTH_IN = 7.0
CAPTION_PT = 6.5
WATERMARK = "RANDOM INIT"
RANDOM_INIT_CAPTION = "Random-init backbone (no pretrained weights): the numbers do not measure the method."
STYLE = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5, "legend.fontsize": 7, "lines.linewidth": 1.2, "lines.markersize": 4,
    "axes.linewidth": 0.6, "grid.linewidth": 0.4, "pdf.fonttype": 42, "svg.fonttype": "none",
}

# Base method -> colour; a method and its IMO variant share the colour (original solid, IMO dashed).
METHOD_COLOURS = {"zs": "#444444", "tip": "#1f77b4", "tipx": "#d62728", "gda": "#2ca02c"}
_EXTRA_COLOURS = ["#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


@dataclass(frozen=True)
class FigureOptions:
    """Output formats (any of png, pdf, svg) and the PNG resolution."""

    formats: tuple[str, ...] = ("png",)
    dpi: int = DEFAULT_DPI

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ClipimoError(f"figure format(s) {bad or 'none'} not supported; choose from {', '.join(FORMATS)}")
        if self.dpi < 50 or self.dpi > 1200:
            raise ClipimoError(f"--dpi must be between 50 and 1200, got {self.dpi}")

    @classmethod
    def parse(cls, formats: str, dpi: int) -> "FigureOptions":
        """From the CLI's ``--format png,pdf`` and ``--dpi``."""
        return cls(tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in formats.split(",") if f.strip())), dpi)

    @property
    def preferred(self) -> str:
        """The format a Markdown report shows inline: PNG, else SVG, else PDF (linked)."""
        return next(f for f in ("png", "svg", "pdf") if f in self.formats)


def slug(name: str) -> str:
    """File-name-safe lower-case form of a dataset name (``ImageNet-V2`` -> ``imagenet_v2``)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "unnamed"


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


# ---- provenance text -----------------------------------------------------------------------------

def identity_text(meta: Mapping[str, Any]) -> str:
    """``model · weights · adapter`` of a results ``meta`` or an overlap record."""
    backbone = meta.get("backbone") or {}
    if backbone.get("model"):
        text = f"{backbone['model']}, weights {backbone.get('weights', '?')}"
    else:
        text = "backbone not recorded"
    adapter = meta.get("adapter") or {}
    sha = adapter.get("sha256") or ""
    if sha:
        name = Path(adapter["path"]).name if adapter.get("path") else "adapter"
        text += f"; adapter {name} (sha256 {sha[:12]})"
    else:
        text += "; no adapter"
    return text


def spread_text(ns: Iterable[int | None]) -> str:
    """"mean ± sample std (ddof=1), n = 3 seeds" for the seed counts behind a figure."""
    counts = sorted({int(n) for n in ns if n})
    if not counts:
        return "difference of means (no per-seed pairs)"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if counts[-1] == 1:
        return "a single seed (n = 1): no error bars"
    return f"mean ± sample std (ddof=1) over n = {n} seeds"


# ---- layout and output ---------------------------------------------------------------------------

@contextlib.contextmanager
def style() -> Iterator[None]:
    """Every figure is built and saved inside this (fonts, line widths, embedded fonts)."""
    with matplotlib.rc_context(STYLE):
        yield


def caption(fig: Figure, lines: Sequence[str], random_init: bool) -> float:
    """Wrapped caption lines at the bottom of ``fig`` (the random-init line first, in red);
    returns their height in inches."""
    width_pt = fig.get_size_inches()[0] * 72
    wrap = max(40, int((width_pt - 12) / (CAPTION_PT * 0.56)))
    items = ([(RANDOM_INIT_CAPTION, "#b03a2e")] if random_init else []) + [(t, "#333333") for t in lines if t]
    y_pt = 4.0
    for text, colour in reversed(items):
        wrapped = textwrap.fill(text, wrap)
        fig.text(0.012, y_pt / (fig.get_size_inches()[1] * 72), wrapped, fontsize=CAPTION_PT, color=colour,
                 ha="left", va="bottom")
        y_pt += (wrapped.count("\n") + 1) * CAPTION_PT * 1.25
    return y_pt / 72


def watermark(ax: Axes) -> None:
    """A short random-init mark inside ``ax``, placed where it hides the least data.

    Call it after everything is drawn. An axes legend gets the mark as its title; otherwise
    matplotlib's "best" legend placement puts it clear of the lines and patches.
    """
    mark = ax.get_legend()
    if mark is None:
        mark = Legend(ax, [], [], loc="best", frameon=False, borderaxespad=0.2)
        ax.add_artist(mark)
    mark.set_title(WATERMARK)
    mark.get_title().set(fontsize=6.5, fontweight="bold", color="#b03a2e")


def place_axes(fig: Figure, top_in: float, bottom_in: float, left_in: float = 0.5, right_in: float = 0.1,
               **spacing: float) -> None:
    """Margins in inches (fonts have fixed sizes, so fixed inches keep labels clear of the edges)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left_in / w, right=1 - right_in / w, top=1 - top_in / h, bottom=bottom_in / h, **spacing)


def save_figure(fig: Figure, stem: str | os.PathLike, options: FigureOptions = FigureOptions()) -> dict[str, Path]:
    """Write ``fig`` as ``stem.<format>`` for each requested format, atomically; returns
    ``{format: path}``."""
    stem = Path(stem)
    FigureCanvasAgg(fig)
    written = {}
    with style():
        for fmt in options.formats:
            path = stem.with_name(stem.name + "." + fmt)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=options.dpi, metadata=_metadata(fmt))
            written[fmt] = path
    return written


def _metadata(fmt: str) -> dict[str, Any]:
    """Creator only, and no timestamp for PDF/SVG, so a figure's bytes depend on its content."""
    if fmt == "png":
        return {"Software": "clipimo (matplotlib)"}
    if fmt == "pdf":
        return {"Creator": "clipimo (matplotlib)", "CreationDate": None}
    return {"Creator": "clipimo (matplotlib)", "Date": None}
