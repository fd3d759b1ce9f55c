"""Tip-Adapter and Tip-X (§6): cache affinities, the KL term, and their exact grid search.

Terms are built one query chunk at a time (so an ImageNet-size split never holds a full
[queries, cache] matrix); terms that depend on fewer hyper-parameters are computed once:
``A`` and ``RL`` once per chunk, ``exp(-beta (1 - A)) L`` once per beta, and all (alpha, gamma)
pairs are scored together by :func:`clipimo.search.count_correct`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..search import PAPER_GRID, Grid, affine_logits, count_correct, first_best
from .common import MethodResult, Problem, Split, chunks, count_hits, percent, zeroshot_logits

KL_TEMPERATURE = 0.5


def cache_logits(distance: torch.Tensor, beta: float, onehot: torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's cache term ``exp(-beta (1 - A)) L`` from ``distance = 1 - A`` (computed once
    for all betas; the floats are those of the direct expression)."""
    return torch.exp(-beta * distance) @ onehot


def kl_divergence(query: torch.Tensor, keys: torch.Tensor, text_weights: torch.Tensor,
                  chunk_rows: int | None = None) -> torch.Tensor:
    """``KL[i, j] = KL(p_i || q_j)``, p/q = softmax of the text logits / 0.5, ``[n, N]``.

    As matrix products, ``sum p log p - p @ (log q)^T``, one chunk of query rows at a time; every
    row is filled (the original loop left the last ``n mod 100`` rows at zero).
    """
    log_q = torch.log_softmax(keys @ text_weights / KL_TEMPERATURE, dim=1)
    out = torch.empty(query.shape[0], keys.shape[0], dtype=query.dtype, device=query.device)
    for rows in chunks(query.shape[0], keys.shape[0], chunk_rows):
        log_p = torch.log_softmax(query[rows] @ text_weights / KL_TEMPERATURE, dim=1)
        p = log_p.exp()
        out[rows] = (p * log_p).sum(1, keepdim=True) - p @ log_q.T
    return out


def rescale(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
            target_lo: torch.Tensor, target_hi: torch.Tensor) -> torch.Tensor:
    """Map ``[lo, hi]`` linearly onto ``[target_lo, target_hi]`` (constant input: ``target_lo``)."""
    span = hi - lo
    unit = (x - lo) / span if span.item() > 0 else torch.zeros_like(x)
    return unit * (target_hi - target_lo) + target_lo


@dataclass(frozen=True)
class Terms:
    """One query chunk: zero-shot logits ``Z``, ``1 - A`` and, for Tip-X, ``RL = (-R) L``."""

    rows: slice
    z: torch.Tensor
    distance: torch.Tensor
    rl: torch.Tensor | None


def split_terms(problem: Problem, split: Split, corrected: bool, with_kl: bool,
                chunk_rows: int | None = None) -> Iterator[Terms]:
    """Chunks of one split's terms. Tip-X's rescale needs the split's global min/max of ``A`` and
    ``KL``, so it makes a first pass for them and recomputes the chunks in a second."""
    keys, n = problem.keys(corrected), split.labels.shape[0]
    width = keys.shape[0]

    def affinity(rows: slice) -> torch.Tensor:
        return split.query(corrected)[rows] @ keys.T

    def kl(rows: slice) -> torch.Tensor:
        return kl_divergence(split.feats[rows], problem.cache_keys, problem.text_weights, chunk_rows)

    if with_kl:
        ext = []
        for rows in chunks(n, width, chunk_rows):
            a, d = affinity(rows), kl(rows)
            ext.append(torch.stack([a.amin(), a.amax(), d.amin(), d.amax()]))
        ext = torch.stack(ext)
        a_lo, a_hi, k_lo, k_hi = ext[:, 0].amin(), ext[:, 1].amax(), ext[:, 2].amin(), ext[:, 3].amax()
    for rows in chunks(n, width, chunk_rows):
        rl = None
        if with_kl:
            rl = -rescale(kl(rows), k_lo, k_hi, a_lo, a_hi) @ problem.cache_onehot
        yield Terms(rows, zeroshot_logits(problem, split.feats[rows]), 1 - affinity(rows), rl)


def grid_counts(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
                chunk_rows: int | None = None) -> np.ndarray:
    """Validation top-1 hits at every grid point, int64 ``[alphas, betas, gammas]`` (gammas: 1 for Tip)."""
    gammas = grid.gammas if with_kl else None
    counts = torch.zeros(len(grid.alphas), len(grid.betas), len(gammas) if with_kl else 1,
                         dtype=torch.long, device=problem.text_weights.device)
    for t in split_terms(problem, problem.val, corrected, with_kl, chunk_rows):
        labels = problem.val.labels[t.rows]
        for b, beta in enumerate(grid.betas):
            e = cache_logits(t.distance, float(beta), problem.cache_onehot)
            counts[:, b, :] += count_correct(t.z, e, labels, grid.alphas, t.rl, gammas)
    return counts.cpu().numpy()


def logits(problem: Problem, split: Split, corrected: bool, with_kl: bool, alpha: float, beta: float,
           gamma: float = 0.0, chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks at one grid point (the per-point computation the search matches)."""
    for t in split_terms(problem, split, corrected, with_kl, chunk_rows):
        e = cache_logits(t.distance, beta, problem.cache_onehot)
        yield t.rows, affine_logits(t.z, e, alpha, t.rl, gamma)


def hits_at(problem: Problem, split: Split, corrected: bool, with_kl: bool, alpha: float,
            beta: float, gamma: float = 0.0, chunk_rows: int | None = None) -> int:
    """Top-1 hits on ``split`` at one grid point."""
    return count_hits(logits(problem, split, corrected, with_kl, alpha, beta, gamma, chunk_rows), split.labels)


def run(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
        chunk_rows: int | None = None) -> MethodResult:
    """Search the grid on val, then score test at the chosen point."""
    counts = grid_counts(problem, corrected, with_kl, grid, chunk_rows)
    ia, ib, ig = first_best(counts)
    hp = {"alpha": float(grid.alphas[ia]), "beta": float(grid.betas[ib])}
    if with_kl:
        hp["gamma"] = float(grid.gammas[ig])
    test_hits = hits_at(problem, problem.test, corrected, with_kl, chunk_rows=chunk_rows, **hp)
    return MethodResult(val_acc=percent(int(counts[ia, ib, ig]), problem.val.labels.shape[0]),
                        test_acc=percent(test_hits, problem.test.labels.shape[0]), hparams=hp)
