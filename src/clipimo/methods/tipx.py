"""Tip-X: ``Z + gamma * (-R) L + alpha * exp(-beta (1 - A)) L``.

``R`` is the query-to-key KL of text-logit softmaxes (always on original features), min-max
rescaled into ``[min A, max A]``; the IMO variant takes ``A`` from corrected features, in the
rescale range as well as in the affinity term.
"""
from __future__ import annotations

from . import cache
from .common import MethodResult, Problem
from .search import PAPER_GRID, Grid


def run(problem: Problem, corrected: bool = False, grid: Grid = PAPER_GRID,
        chunk_rows: int | None = None) -> MethodResult:
    """Search (alpha, beta, gamma) on val; hparams ``{"alpha", "beta", "gamma"}``."""
    return cache.run(problem, corrected, with_kl=True, grid=grid, chunk_rows=chunk_rows)
