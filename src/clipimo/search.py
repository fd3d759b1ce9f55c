"""Exact vectorised hyper-parameter search for logits that are affine in the searched weights.

Tip-Adapter, Tip-X and GDA all score a query as ``(Z + gamma * RL) + alpha * E`` where, for a
fixed beta, ``Z``, ``RL`` and ``E`` are fixed ``[n, C]`` matrices. :func:`count_correct` gives, for
every (alpha, gamma) pair at once, the number of top-1 hits that a per-point loop evaluating
:func:`affine_logits` and ``argmax`` (ties to the lowest class) would count, bit for bit:

* Pruning: only whether the label wins matters. Over the box spanned by the grid the difference
  between a class's logit and the label's is affine, so its extremes lie at the box corners. A
  class trailing the label at every corner (by more than a rounding margin far above float32
  error) can never tie or beat it anywhere; one leading at every corner always beats it. Most
  queries are then decided at every point at once; the rest keep a handful of rival classes and
  are bounded again on blocks of the grid, which decides most (query, block) pairs whole too.
* Exactness: the label and its rivals are evaluated with the same float32 operations in the same
  order as :func:`affine_logits`, so every compared logit is the identical float, and the tie rule
  (first maximum in class order) is applied to them as ``argmax`` would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

# Relative margin of the pruning bounds. A float32 logit ``(z + g*r) + a*e`` errs by at most
# ~3 * 2**-24 * (|z| + |g r| + |a e|); a difference of two, and the float32 bounds on it, by under
# 1e-6 of S = max|z| + max|g| max|r| + max|a| max|e|. A margin of 1e-4 S is 100 times that.
PRUNE_RTOL = 1e-4
# Elements of one [queries, rivals, gammas, alphas] batch evaluated at once (bounds memory only).
EVAL_BUDGET = 1 << 24
# The exact stage cuts the (alpha, gamma) grid into about this many blocks per axis and bounds
# each undecided query again per block: most (query, block) pairs are then decided whole.
BLOCKS = (10, 10)


@dataclass(frozen=True)
class Grid:
    """Searched values; choices are ordered alpha-major, then beta, then gamma."""

    alphas: np.ndarray
    betas: np.ndarray
    gammas: np.ndarray


# The paper's grid, endpoints included: 4,000 Tip-Adapter and 200,000 Tip-X points.
PAPER_GRID = Grid(np.linspace(0, 20, 200), np.linspace(0, 20, 20), np.linspace(0, 30, 50))


def affine_logits(z: torch.Tensor, e: torch.Tensor, alpha: float,
                  rl: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """Logits at one grid point: ``(Z + gamma * RL) + alpha * E``, or ``Z + alpha * E`` without RL."""
    if rl is None:
        return z + alpha * e
    return z + gamma * rl + alpha * e


def first_best(counts: np.ndarray | torch.Tensor) -> tuple[int, ...]:
    """Index of the largest count, ties to the first in C (row-major) order of the array."""
    counts = counts.cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(counts)), counts.shape))


def count_correct(z: torch.Tensor, e: torch.Tensor, labels: torch.Tensor,
                  alphas: Sequence[float] | np.ndarray, rl: torch.Tensor | None = None,
                  gammas: Sequence[float] | np.ndarray | None = None,
                  budget: int = EVAL_BUDGET) -> torch.Tensor:
    """Top-1 hits of :func:`affine_logits` at every (alpha, gamma): int64 ``[len(alphas), len(gammas)]``.

    ``z``, ``e`` (and ``rl``) are ``[n, C]`` float tensors on one device, ``labels`` ``[n]``. Without
    ``rl`` the gamma axis has length 1. Identical to looping over the points (see module doc).
    """
    n, num_classes = z.shape
    dev, dt = z.device, z.dtype
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), device=dev).to(dt)
    g = torch.as_tensor(np.asarray([0.0] if rl is None else gammas, dtype=np.float64),
                        device=dev).to(dt)
    counts = torch.zeros(len(g), len(a), dtype=torch.long, device=dev)
    if n == 0:
        return counts.T.contiguous()

    # lead_k = l_k - l_label is affine in (alpha, gamma) and separable, so over the grid's box
    # (float32 grid values stay inside it: rounding is monotone) its extremes are
    # dz + extremes of gamma * dr + extremes of alpha * de. A class trailing the label everywhere
    # by more than tol can never tie or beat it (a "threat" might); one leading everywhere by
    # more than tol always beats it.
    a_ends, g_ends = (a.min().item(), a.max().item()), (g.min().item(), g.max().item())
    lo_lead = _lead(z, labels)
    hi_lead = lo_lead.clone()
    scale = torch.linalg.vector_norm(z, float("inf"), dim=1)
    for x, ends in ((e, a_ends), (rl, g_ends)):
        if x is not None:
            lo, hi = _extremes(_lead(x, labels), *ends)
            lo_lead += lo
            hi_lead += hi
            scale += max(map(abs, ends)) * torch.linalg.vector_norm(x, float("inf"), dim=1)
    tol = PRUNE_RTOL * scale
    threat = hi_lead >= -tol[:, None]
    threat.scatter_(1, labels[:, None], False)
    beaten = (lo_lead > tol[:, None]).any(1)
    del lo_lead, hi_lead
    nthreat = threat.sum(1)
    # No threat: the label wins at every point. Beaten: it never does. Otherwise: evaluate exactly.
    counts += (nthreat == 0).sum()
    todo = torch.nonzero((nthreat > 0) & ~beaten).squeeze(1)
    if todo.numel() == 0:
        return counts.T.contiguous()
    todo = todo[torch.argsort(nthreat[todo], stable=True)]
    ks = nthreat[todo].cpu().numpy()
    a_blk, g_blk = _blocks(a, BLOCKS[0]), _blocks(g, BLOCKS[1])
    hits = torch.zeros(len(g_blk) * len(a_blk), g_blk.shape[1], a_blk.shape[1], dtype=torch.long,
                       device=dev)
    # Groups of queries with similar threat counts, each within the element budget.
    per_query = a_blk.numel() * g_blk.numel()
    pos = np.arange(len(todo))
    start = 0
    while start < len(todo):
        fits = (pos[start:] - start + 1) * ks[start:] * per_query <= budget
        stop = start + max(1, int(fits.sum()))
        _block_hits(z, e, rl, labels, threat, tol, todo[start:stop], int(ks[stop - 1]),
                    a_blk, g_blk, hits)
        start = stop
    blocked = hits.view(len(g_blk), len(a_blk), g_blk.shape[1], a_blk.shape[1]).permute(0, 2, 1, 3)
    counts += blocked.reshape(g_blk.numel(), a_blk.numel())[: len(g), : len(a)]
    return counts.T.contiguous()


def _lead(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``x[i, k] - x[i, label_i]``."""
    return x - x.gather(1, labels[:, None])


def _extremes(x: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise min and max of ``t * x`` over ``t`` in ``[lo, hi]`` (floats or broadcast tensors)."""
    at_lo, at_hi = x * lo, x * hi
    return torch.minimum(at_lo, at_hi), torch.maximum(at_lo, at_hi)


def _blocks(values: torch.Tensor, parts: int) -> torch.Tensor:
    """``values`` in order as ``[blocks, size]``, the last block padded with the final value."""
    size = -(-len(values) // parts)
    nblocks = -(-len(values) // size)
    return torch.cat([values, values[-1:].expand(nblocks * size - len(values))]).view(nblocks, size)


def _block_hits(z, e, rl, labels, threat, tol, q, k, a_blk, g_blk, hits) -> None:
    """Add to ``hits`` ``[Bg * Ba, sg, sa]`` the exact hits of queries ``q`` (at most ``k`` threats).

    The bounds are recomputed per grid block against the query's threats only: most
    (query, block) pairs are then decided whole, and the rest are evaluated point by point.
    """
    num_classes = z.shape[1]
    ar = torch.arange(num_classes, device=z.device)
    idx = torch.where(threat[q], ar, num_classes).topk(k, 1, largest=False, sorted=True).values
    pad = idx == num_classes  # fewer than k threats: padding has -inf logits and never wins
    rows, y, cols = q[:, None], labels[q][:, None], idx.clamp(max=num_classes - 1)
    # The label's terms [m, 1] and its rivals' [m, k].
    zt, et = z[rows, y], e[rows, y]
    zr, er = z[rows, cols].masked_fill(pad, -torch.inf), e[rows, cols].masked_fill(pad, 0.0)
    rt, rr = (None, None) if rl is None else (rl[rows, y], rl[rows, cols].masked_fill(pad, 0.0))

    lo_a, hi_a = _extremes((er - et)[..., None], a_blk.amin(1), a_blk.amax(1))  # [m, k, Ba]
    lo = (zr - zt)[..., None, None] + lo_a[:, :, None, :]  # [m, k, Bg, Ba]
    hi = (zr - zt)[..., None, None] + hi_a[:, :, None, :]
    if rl is not None:
        lo_g, hi_g = _extremes((rr - rt)[..., None], g_blk.amin(1), g_blk.amax(1))  # [m, k, Bg]
        lo = lo + lo_g[..., None]
        hi = hi + hi_g[..., None]
    t = tol[q].view(-1, 1, 1, 1)
    live = (hi >= -t).any(1)  # [m, Bg, Ba]: some rival may tie or beat the label in the block
    beaten = (lo > t).any(1)  # some rival beats it throughout the block
    hits += (~live).sum(0).view(-1, 1, 1)
    qi, bg, ba = torch.nonzero(live & ~beaten, as_tuple=True)
    if qi.numel() == 0:
        return
    ap, gp = a_blk[ba], g_blk[bg]  # [P, sa], [P, sg]

    def logits(zc, ec, rc) -> torch.Tensor:
        """``[P, sg, sa, j]`` from ``[P, j]`` terms, as :func:`affine_logits` computes them."""
        base = zc[:, None] if rc is None else zc[:, None] + gp[:, :, None] * rc[:, None]
        return base[:, :, None] + (ap[:, :, None] * ec[:, None])[:, None]

    target = logits(zt[qi], et[qi], None if rl is None else rt[qi])
    other = logits(zr[qi], er[qi], None if rl is None else rr[qi])
    # argmax takes the first maximum: the label must beat lower classes strictly and at least
    # tie higher ones.
    wins = torch.where((idx < y)[qi][:, None, None], target > other, target >= other).all(-1)
    hits.index_add_(0, bg * len(a_blk) + ba, wins.long())
