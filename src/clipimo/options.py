"""Defaults and value parsing that the command line needs before any heavy module is imported."""
from __future__ import annotations

from typing import Any, Callable

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_METHODS = ("zs", "tip", "tip-imo", "tipx", "tipx-imo")
# Every method ``clipimo.methods.METHODS`` implements, in its order (a test keeps them equal).
METHOD_NAMES = ("zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo", "proker", "proker-imo", "ape", "ape-imo",
                "tip-f", "tip-f-imo")
# Corrected streams (clipimo.corrections) and imagepca's default mode.
CORRECTIONS = ("imo", "isoclip", "textpca", "imagepca")
IMAGEPCA_DEFAULT = "abtt-2"
DEFAULT_BINS = 200  # similarity histogram bins over [-1, 1] (clipimo.diagnostics)
DEFAULT_SHARD_SIZE = 4096  # images per feature-cache shard, the unit torchrun ranks split (clipimo.features)


def as_list(value: Any, cast: Callable = str) -> list:
    """'1,2,4' or [1, 2, 4] -> [1, 2, 4]."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [cast(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]


AUTO_BINS_RANGE = (20, 200)  # what --bins auto may choose (clipimo.diagnostics.auto_bins)
FIGURE_FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 200


def add_figure_args(p: Any) -> None:
    """``--format`` and ``--dpi`` for every command that writes figures (see clipimo.plots)."""
    p.add_argument("--format", default="png",
                   help=f"figure formats, comma-separated from {','.join(FIGURE_FORMATS)} (default png)")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help=f"PNG resolution (default {DEFAULT_DPI})")


def parse_xlim(value: str | None) -> tuple[float, float] | None:
    """``--xlim LOW,HIGH`` (an overlap figure's fixed x-range) within [-1, 1], LOW < HIGH."""
    from .errors import ClipimoError

    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ClipimoError(f"--xlim must be LOW,HIGH (two numbers), got {value!r}") from None
    if not -1.0 <= lo < hi <= 1.0:
        raise ClipimoError(f"--xlim must satisfy -1 <= LOW < HIGH <= 1 (cosine similarities), got {value!r}")
    return lo, hi
