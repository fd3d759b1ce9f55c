"""The figure sections of a report: each figure written in the requested formats under
``plots/`` and linked from the Markdown (PNG or SVG inline, other formats as links)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..utils.log import RANDOM_INIT_WARNING
from ..utils.markdown import quote_warning
from .figures import Written, few_pairs_warning, overlap_figure, run_figures
from .overlap_file import overlap_table
from .records import shown_path
from .style import FigureOptions, slug

PLOTS_DIR = "plots"


def figure_link(files: Written, out_dir: Path, label: str, options: FigureOptions) -> str:
    """An inline image of the preferred format, then links to the other formats."""
    rel = {fmt: path.relative_to(out_dir).as_posix() for fmt, path in files.items()}
    first = options.preferred
    text = f"![{label}]({rel[first]})" if first in ("png", "svg") else f"[{label} ({first.upper()})]({rel[first]})"
    others = [f"[{fmt.upper()}]({path})" for fmt, path in rel.items() if fmt != first]
    return text + ("" if not others else "\n\nAlso as " + ", ".join(others) + ".")


def run_figure_section(summary: Sequence[Mapping[str, Any]], gains: Sequence[Mapping[str, Any]], out_dir: Path,
                       meta: Mapping[str, Any], datasets: Sequence[str], methods: Sequence[str],
                       options: FigureOptions) -> list[str]:
    """Accuracy grid, IMO gain and accuracy vs shots per dataset (average first)."""
    figs = run_figures(summary, gains, out_dir / PLOTS_DIR, meta, datasets, methods, options)
    if not figs["accuracy"]:
        return []
    out = ["## Figures", "",
           "Error bars: sample standard deviation (ddof=1) over seeds, n stated in each caption. An IMO "
           "variant shares its original's colour (dashed, open markers).", ""]
    if figs["grid"]:
        out += ["### Accuracy vs shots, every dataset", "",
                figure_link(figs["grid"]["all"], out_dir, "accuracy vs shots, all datasets", options), ""]
    for kind, heading in (("gain", "IMO gain vs shots"), ("accuracy", "Accuracy vs shots")):
        order = (["average"] if "average" in figs[kind] else []) + [d for d in datasets if d in figs[kind]]
        for name in order:
            label = "Average over datasets" if name == "average" else name
            out += [f"### {heading}: {label}", "", figure_link(figs[kind][name], out_dir, f"{heading}: {label}", options), ""]
    return out


def overlap_section(overlaps: Sequence[tuple[str, Mapping[str, Any]]], out_dir: Path, options: FigureOptions,
                    xlim: tuple[float, float] | None = None) -> list[str]:
    """Table and figure of each overlap record."""
    if not overlaps:
        return []
    out = ["## Intra-modal overlap", "",
           "Overlap = area of the intersection of the paired (same class) and unpaired (different class) "
           "cosine-similarity densities; BC = Bhattacharyya coefficient; variance = mean per-dimension "
           "variance of the L2-normalised features. Lower overlap means better separated image-image "
           "similarities.", ""]
    used: set[str] = set()
    for i, (path, record) in enumerate(overlaps, 1):
        desc = (record.get("source") or {}).get("description") or Path(path).parent.name or Path(path).name
        stem = f"overlap_{i}_{slug(desc)[:40]}"
        while stem in used:
            stem += "_"
        used.add(stem)
        files = overlap_figure(record, out_dir / PLOTS_DIR / stem, options=options, xlim=xlim)
        out += [f"### {desc}", "", f"From `{shown_path(path, out_dir)}`.", ""]
        if record.get("random_init"):
            out += [quote_warning(RANDOM_INIT_WARNING), ""]
        if few := few_pairs_warning(record):
            out += [quote_warning(few[0].upper() + few[1:] + "."), ""]
        out += [overlap_table(record), "", figure_link(files, out_dir, f"overlap: {desc}", options), ""]
    return out
