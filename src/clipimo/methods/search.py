"""Exact vectorised hyper-parameter search for logits that are affine in the searched weights.

Tip-Adapter, Tip-X and GDA all score a query as ``(Z + gamma * RL) + alpha * E`` where, for a
fixed beta, ``Z``, ``RL`` and ``E`` are fixed ``[n, C]`` matrices. :func:`count_correct` gives, for
every (alpha, gamma) pair at once, the number of top-1 hits that a per-point loop evaluating
:func:`affine_logits` and ``argmax`` (ties to the lowest class) would count, bit for bit:

* Pruning: only whether the label wins matters. Over the box spanned by the grid the difference
  between a class's logit and the label's is affine, so its extremes lie at the box corners. A
  class trailing the label at every corner by more than a margin ``tol`` can never tie or beat it;
  one leading at every corner always beats it. Most queries are decided at every point at once.
* Intervals: for a query with rival classes ("threats") and one gamma, the alphas where the label
  beats every threat by more than ``tol`` form one interval (an intersection of half-lines), and
  so do the alphas where no threat leads it by more than ``tol``. Grid alphas in the first are
  hits, those outside the second are misses: a count per (query, gamma), with no work per alpha.
* Exactness: only the few alphas between the two intervals (within ``tol`` of a crossing) are
  evaluated, with the same float32 operations in the same order as :func:`affine_logits`, so every
  compared logit is the identical float, and the tie rule (first maximum in class order) is
  applied to them as ``argmax`` would. ``tol`` is far above every rounding error in play (see
  :data:`PRUNE_RTOL`), so the pruned and interval decisions agree with the float32 comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

# Relative margins of the bounds. A float32 logit ``(z + g*r) + a*e`` errs by at most
# 2**-24 * (2|z| + 3|g r| + 2|a e|), so a difference of two by under 6 * 2**-24 S < 4e-7 S, with
# S = max|z| + max|g| max|r| + max|a| max|e| over the row. The pruning bounds are float32 sums of
# float32 products (errors under 2e-6 S): their margin, 1e-4 S, is 50 times both together. The
# intervals are float64 (errors ~1e-15 S): their margin, 1e-5 S, is 25 times the logit error.
PRUNE_RTOL = 1e-4
INTERVAL_RTOL = 1e-5
# Elements of one [points, threats] batch of exact evaluations (bounds memory only).
EVAL_BUDGET = 1 << 24
# Stacked terms of at most this many elements are counted in one pass, as one problem of B * n rows:
# for small problems the ~40 tensor operations of a count, not their sizes, take the time.
STACK_ELEMENTS = 1 << 21


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

    ``z`` (and ``rl``) are ``[n, C]`` float tensors on one device, ``labels`` ``[n]``; ``e`` is
    ``[n, C]``, or ``[B, n, C]`` for B terms sharing ``z`` and ``rl`` (one per beta: the work on
    those is then done once), which gives ``[B, len(alphas), len(gammas)]``. Without ``rl`` the
    gamma axis has length 1. Identical to looping over the points (see module doc).
    """
    dev, dt = z.device, z.dtype
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), device=dev).to(dt)
    g = torch.as_tensor(np.asarray([0.0] if rl is None else gammas, dtype=np.float64), device=dev).to(dt)
    stacked = e.dim() == 3
    terms = e if stacked else e[None]
    counts = torch.zeros(len(terms), len(a), len(g), dtype=torch.long, device=dev)
    order = torch.argsort(a, stable=True)
    if len(terms) > 1 and terms.numel() <= STACK_ELEMENTS:
        num, n = terms.shape[:2]
        group = torch.arange(num, device=dev).repeat_interleave(n)
        counts[:, order] = _count(_Fixed.of(z, rl, labels, g).repeated(num), terms.reshape(num * n, -1), a[order],
                                  budget, group, num).transpose(1, 2)
    else:
        # Z and RL laid out like the terms (a batched product may leave them rows-fastest): the
        # counter's elementwise passes then read one layout (mixed ones ran ~1.3x as long).
        def like(x: torch.Tensor | None) -> torch.Tensor | None:
            return x.T.contiguous().T if x is not None and terms[0].stride(0) < terms[0].stride(1) else x

        fixed = _Fixed.of(like(z), like(rl), labels, g)
        one = torch.zeros(labels.shape[0], dtype=torch.long, device=dev)
        for b, term in enumerate(terms):
            counts[b, order] = _count(fixed, term, a[order], budget, one, 1)[0].T
    return counts if stacked else counts[0]


@dataclass(frozen=True)
class _Fixed:
    """What does not depend on ``e``: the terms, ``Z + gamma * RL`` leads' extremes over the gammas
    (``lo``, ``hi``, ``[n, C]``) and their part of the error scale (``scale``, ``[n]``)."""

    z: torch.Tensor
    rl: torch.Tensor | None
    labels: torch.Tensor
    gammas: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, z, rl, labels, gammas) -> "_Fixed":
        lo = _lead(z, labels)
        hi = lo.clone()
        scale = _max_abs(z)
        if rl is not None:
            r_lo, r_hi = _extremes(_lead(rl, labels), gammas.min().item(), gammas.max().item())
            lo += r_lo
            hi += r_hi
            scale += gammas.abs().max() * _max_abs(rl)
        return cls(z, rl, labels, gammas, lo, hi, scale)

    def repeated(self, times: int) -> "_Fixed":
        """The rows ``times`` times over, one copy after another (a stack of terms as one problem)."""
        def rows(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat(times, *([1] * (x.dim() - 1)))

        return _Fixed(rows(self.z), rows(self.rl), rows(self.labels), self.gammas, rows(self.lo), rows(self.hi),
                      rows(self.scale))


def _lead(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``x[i, k] - x[i, label_i]``."""
    return x - x.gather(1, labels[:, None])


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``max |x|`` without a temporary of ``x``'s size (the infinity norm). Separate
    ``amax`` and ``amin``: on CPU they are vectorised, while ``aminmax`` takes ~15x and
    ``linalg.vector_norm`` 10-40x as long."""
    return torch.maximum(x.amax(1), x.amin(1).neg_())


def _row_count(mask: torch.Tensor) -> torch.Tensor:
    """Row-wise number of True in a bool ``[n, C]``: summed as bytes into int32 (a bool sum into
    int64 takes ~6x as long on CPU)."""
    return mask.view(torch.uint8).sum(1, dtype=torch.int32)


def _extremes(x: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise min and max of ``t * x`` over ``t`` in ``[lo, hi]`` (floats). ``x`` (a fresh
    temporary of the caller's) is overwritten: two ``[n, C]`` allocations, not four."""
    at_lo = x * lo
    at_hi = x.mul_(hi)
    smallest = torch.minimum(at_lo, at_hi)
    return smallest, torch.maximum(at_lo, at_hi, out=at_lo)


def _count(f: _Fixed, e: torch.Tensor, alphas: torch.Tensor, budget: int, group: torch.Tensor,
           groups: int) -> torch.Tensor:
    """Hits ``[groups, len(gammas), len(alphas)]`` of ``e``'s rows summed per ``group`` (each row's
    index in ``0..groups-1``); ``alphas`` sorted ascending (float32)."""
    labels, num_gammas, num_alphas = f.labels, len(f.gammas), len(alphas)
    lo_e, hi_e = _extremes(_lead(e, labels), alphas[0].item(), alphas[-1].item())
    tol = PRUNE_RTOL * (f.scale + alphas.abs().max() * _max_abs(e))
    # lead_k = l_k - l_label is affine in (alpha, gamma) and separable, so over the grid's box
    # (float32 grid values stay inside it: rounding is monotone) its extremes are the sums of
    # extremes. A class trailing everywhere by more than tol can never tie or beat the label (a
    # "threat" might); one leading everywhere by more than tol always beats it.
    threat = hi_e.add_(f.hi) >= -tol[:, None]
    threat.scatter_(1, labels[:, None], False)
    beaten = lo_e.add_(f.lo).amax(1) > tol  # some class leads by more than tol everywhere
    del lo_e, hi_e
    nthreat = _row_count(threat)
    unrivalled = torch.bincount(group[nthreat == 0], minlength=groups)[:, None, None]  # the label wins everywhere
    todo = torch.nonzero((nthreat > 0) & ~beaten).squeeze(1)
    if todo.numel() == 0:
        return unrivalled.expand(groups, num_gammas, num_alphas).clone()
    # Threat pairs, grouped by query (q indexes todo) in class order.
    q, cls = torch.nonzero(threat[todo], as_tuple=True)
    rows = todo[q]
    y = labels[rows]

    def diff(x: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros_like(q, dtype=torch.float64) if x is None else x[rows, cls].double() - x[rows, y].double()

    de = diff(e)
    lead0 = diff(f.z)[:, None] + f.gammas.double()[None] * diff(f.rl)[:, None]  # [P, G]: lead at alpha 0
    margin = tol[rows].double()[:, None] * (INTERVAL_RTOL / PRUNE_RTOL)
    a64 = alphas.double()
    m = len(todo)
    per_query = torch.bincount(q, minlength=m)
    rising, falling = de >= 0, de <= 0  # no upper / no lower bound from this threat

    def interval(offset: torch.Tensor, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (query, gamma), the sorted-alpha index range where every threat's ``lead + offset``
        is < 0 (``strict``) or <= 0: the intersection of each threat's half-line."""
        c0 = lead0 + offset
        cut = c0.div_(de[:, None]).neg_()
        never = (de == 0)[:, None] & ((lead0 >= -offset) if strict else (lead0 > -offset))
        lo = torch.where(rising[:, None], -torch.inf, cut).masked_fill_(never, torch.inf)
        hi = torch.where(falling[:, None], torch.inf, cut).masked_fill_(never, -torch.inf)
        lo = torch.segment_reduce(lo, "max", lengths=per_query, axis=0, unsafe=True)
        hi = torch.segment_reduce(hi, "min", lengths=per_query, axis=0, unsafe=True)
        # Strict: alphas in (lo, hi); otherwise in [lo, hi].
        start = torch.searchsorted(a64, lo, right=strict)
        stop = torch.searchsorted(a64, hi, right=not strict)
        return start, torch.maximum(stop, start)

    w0, w1 = interval(margin, True)     # the label wins for sure
    j0, j1 = interval(-margin, False)   # outside: it loses for sure
    sure = w1 > w0
    w0, w1 = torch.maximum(w0, j0), torch.minimum(w1, j1)
    gi = torch.arange(num_gammas, device=e.device).expand(m, num_gammas)
    bi = group[todo][:, None].expand(m, num_gammas)
    ones = torch.ones_like(w0[sure])
    hits = torch.zeros(groups, num_gammas, num_alphas + 1, dtype=torch.long, device=e.device)
    hits.index_put_((bi[sure], gi[sure], w0[sure]), ones, accumulate=True)
    hits.index_put_((bi[sure], gi[sure], w1[sure]), -ones, accumulate=True)
    hits = hits.cumsum(2)[..., :num_alphas] + unrivalled
    # The rest of [j0, j1) is evaluated point by point: [j0, w0) and [w1, j1) (all of it when
    # no alpha is sure).
    first_stop = torch.where(sure, w0, j1)
    second_start = torch.where(sure, w1, j1)
    starts = torch.cat([j0.flatten(), second_start.flatten()])
    sizes = torch.cat([(first_stop - j0).flatten(), (j1 - second_start).flatten()])
    qg = torch.arange(m * num_gammas, device=e.device).repeat(2)
    keep = sizes > 0
    starts, sizes, qg = starts[keep], sizes[keep], qg[keep]
    if sizes.numel() == 0:
        return hits
    seg, rank = _segments(sizes)
    pt_qg, pt_a = qg[seg], starts[seg] + rank
    pt_q, pt_g = pt_qg // num_gammas, pt_qg % num_gammas
    first_pair = torch.cumsum(per_query, 0) - per_query
    k = per_query[pt_q]
    ends = torch.cumsum(k, 0)
    start = 0
    while start < len(pt_q):
        # Points whose [point, threat] entries fit the budget (at least one point).
        limit = (ends[start - 1] if start else 0) + budget
        stop = max(start + 1, int(torch.searchsorted(ends, limit, right=True)))
        sl = slice(start, stop)
        wins = _exact(f, e, todo, cls, q, first_pair, pt_q[sl], pt_g[sl], pt_a[sl], k[sl], alphas)
        hits.index_put_((group[todo[pt_q[sl]]], pt_g[sl], pt_a[sl]), wins.long(), accumulate=True)
        start = stop
    return hits


def _segments(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments of ``sizes``, concatenated: each element's segment and its rank in it."""
    seg = torch.repeat_interleave(sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    return seg, torch.arange(len(seg), device=sizes.device) - offsets[seg]


def _exact(f: _Fixed, e, todo, cls, q, first_pair, pt_q, pt_g, pt_a, k, alphas) -> torch.Tensor:
    """Whether the label wins at each point (query ``todo[pt_q]``, ``gammas[pt_g]``,
    ``alphas[pt_a]``) against all its threats, computed as :func:`affine_logits` does."""
    point, rank = _segments(k)
    pair = first_pair[pt_q][point] + rank
    row, rival = todo[q[pair]], cls[pair]
    label = f.labels[row]
    gp, ap = f.gammas[pt_g][point], alphas[pt_a][point]

    def logit(c: torch.Tensor) -> torch.Tensor:
        base = f.z[row, c] if f.rl is None else f.z[row, c] + gp * f.rl[row, c]
        return base + ap * e[row, c]

    target, other = logit(label), logit(rival)
    # argmax takes the first maximum: the label must beat lower classes strictly and at least
    # tie higher ones.
    beats = torch.where(rival < label, target > other, target >= other)
    losses = torch.zeros(len(pt_q), dtype=torch.long, device=e.device).index_add_(0, point, (~beats).long())
    return losses == 0
