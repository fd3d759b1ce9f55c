"""Tip-Adapter: ``Z + alpha * exp(-beta (1 - A)) L``; the IMO variant takes ``A`` from corrected features."""
from __future__ import annotations

from . import cache
from .common import MethodResult, Problem
from .search import PAPER_GRID, Grid


def run(problem: Problem, corrected: bool = False, grid: Grid = PAPER_GRID,
        chunk_rows: int | None = None) -> MethodResult:
    """Search (alpha, beta) on val; hparams ``{"alpha", "beta"}``."""
    return cache.run(problem, corrected, with_kl=False, grid=grid, chunk_rows=chunk_rows)
