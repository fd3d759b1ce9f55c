"""Tip-Adapter and Tip-X (§6): cache affinities, the KL term, and their exact grid search.

The keys are grouped by class once (a stable sort of the labels), so every ``X L`` with one-hot
values ``L`` is a segment sum (:func:`~clipimo.methods.common.class_sums`), about ``C`` times less
work than the product. Terms are built one query chunk at a time (an ImageNet-size split never
holds a full [queries, cache] matrix): ``A`` once per chunk, ``exp(-beta (1 - A)) L`` once per
(chunk, beta), and all (alpha, gamma) pairs are scored together by
:func:`clipimo.search.count_correct`. Tip-X's ``R`` is an affine map of ``KL`` whose coefficients
are the split's global extremes, so ``R L`` is the same map applied to the per-class sums
``KL L``: one pass collects those sums and the extremes, then the map is applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..search import PAPER_GRID, Grid, affine_logits, count_correct, first_best
from .common import MethodResult, Problem, Split, chunks, class_sums, count_hits, percent, zeroshot_logits

KL_TEMPERATURE = 0.5
# Tip-X needs a split's extremes before its first ``R L``: up to this many elements of
# ``exp(-beta (1 - A)) L`` (all betas, whole split: 0.8 GB for ImageNet's 10,000 val queries) are
# kept from the pass that finds them; larger splits recompute ``A`` in a second pass instead.
HOLD_ELEMENTS = 1 << 28
# Seconds before a search's progress bar appears (on a terminal only): quick searches show none.
PROGRESS_DELAY = 2.0


@dataclass(frozen=True)
class Cache:
    """Cache keys grouped by class (stable order): affinity keys, original keys for KL, labels."""

    keys: torch.Tensor
    kl_keys: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @classmethod
    def of(cls, problem: Problem, corrected: bool, keys: torch.Tensor | None = None) -> "Cache":
        """The problem's cache; ``keys`` ``[N, D]`` (in ``cache_labels`` order) replaces the affinity
        keys, e.g. keys fine-tuned from the cache."""
        order = torch.argsort(problem.cache_labels, stable=True)
        keys = problem.keys(corrected) if keys is None else keys
        return cls(keys[order], problem.cache_keys[order], problem.cache_labels[order], problem.num_classes)

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """``values @ L`` for ``[rows, N]`` values in this cache's key order."""
        return class_sums(values, self.labels, self.num_classes)

    def counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes).to(self.keys.dtype)


def cache_logits(distance: torch.Tensor, beta: float, cache: Cache, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Tip-Adapter's cache term ``exp(-beta (1 - A)) L`` from ``distance = 1 - A`` (computed once
    for all betas); ``buffer`` (shaped like ``distance``) spares an allocation per beta."""
    buffer = torch.empty_like(distance) if buffer is None else buffer
    return cache.sums(torch.mul(distance, -beta, out=buffer).exp_())


def kl_divergence(query: torch.Tensor, keys: torch.Tensor, text_weights: torch.Tensor,
                  chunk_rows: int | None = None) -> torch.Tensor:
    """``KL[i, j] = KL(p_i || q_j)``, p/q = softmax of the text logits / 0.5, ``[n, N]``.

    As matrix products, ``sum p log p - p @ (log q)^T``, one chunk of query rows at a time; every
    row is filled (the original loop left the last ``n mod 100`` rows at zero). With more classes
    than feature dimensions (ImageNet: 1,000 > 512), ``p @ (log q)^T`` is taken through the
    features, ``(p W^T / 0.5) K^T - (sum p) lse(q)``: the same value, ``C / D`` times fewer
    multiply-adds.
    """
    key_logits = keys @ text_weights / KL_TEMPERATURE
    lse = torch.logsumexp(key_logits, dim=1)
    through_features = text_weights.shape[1] > text_weights.shape[0]
    log_q = None if through_features else key_logits - lse[:, None]
    out = torch.empty(query.shape[0], keys.shape[0], dtype=query.dtype, device=query.device)
    for rows in chunks(query.shape[0], keys.shape[0], chunk_rows):
        log_p = torch.log_softmax(query[rows] @ text_weights / KL_TEMPERATURE, dim=1)
        p = log_p.exp()
        if through_features:
            cross = (p @ text_weights.T / KL_TEMPERATURE) @ keys.T - p.sum(1, keepdim=True) * lse
        else:
            cross = p @ log_q.T
        out[rows] = torch.sub((p * log_p).sum(1, keepdim=True), cross, out=cross)
    return out


def rescaled_sums(kl_sums: torch.Tensor, counts: torch.Tensor, kl_range: Sequence[torch.Tensor],
                  a_range: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R L`` from ``KL L``: R maps ``kl_range`` linearly onto ``a_range`` (a constant KL onto its
    low end), so a class of ``n_c`` keys sums to ``s (KL L - n_c lo) + n_c a_lo``."""
    (lo, hi), (a_lo, a_hi) = kl_range, a_range
    span = hi - lo
    if span.item() > 0:
        return (kl_sums - counts * lo) * ((a_hi - a_lo) / span) + counts * a_lo
    return (counts * a_lo).expand_as(kl_sums).clone()


@dataclass(frozen=True)
class Terms:
    """One query chunk: zero-shot ``Z``, ``exp(-beta (1 - A)) L`` per beta, and Tip-X's ``(-R) L``."""

    rows: slice
    z: torch.Tensor
    e: torch.Tensor
    rl: torch.Tensor | None


def split_terms(problem: Problem, split: Split, cache: Cache, corrected: bool, with_kl: bool,
                betas: Sequence[float] | np.ndarray, chunk_rows: int | None = None,
                desc: str = "terms") -> Iterator[Terms]:
    """Chunks of one split's terms (``e`` is ``[len(betas), rows, C]``).

    Tip-X's rescale needs the split's global extremes of ``A`` and ``KL``: a first pass collects
    them with the per-class KL sums and, within :data:`HOLD_ELEMENTS`, keeps the other terms;
    otherwise ``A`` is recomputed in a second pass. Shows a progress bar on a terminal when slow.
    """
    n, width, num_classes = split.labels.shape[0], cache.keys.shape[0], cache.num_classes
    slices = list(chunks(n, width, chunk_rows))
    hold = with_kl and len(betas) * n * num_classes <= HOLD_ELEMENTS
    bar = tqdm(total=len(slices) * (2 if with_kl and not hold else 1), desc=desc, unit="chunk",
               disable=None, delay=PROGRESS_DELAY, leave=False)

    def terms(rows: slice, a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        a = split.query(corrected)[rows] @ cache.keys.T if a is None else a
        distance = torch.rsub(a, 1)
        del a
        buffer = torch.empty_like(distance)
        e = torch.stack([cache_logits(distance, float(beta), cache, buffer) for beta in betas])
        bar.update()
        return zeroshot_logits(problem, split.feats[rows]), e

    with bar:
        if not with_kl:
            for rows in slices:
                yield Terms(rows, *terms(rows), None)
            return
        kl_sums = torch.empty(n, num_classes, dtype=cache.keys.dtype, device=cache.keys.device)
        extremes, held = [], []
        for rows in slices:
            a = split.query(corrected)[rows] @ cache.keys.T
            kl = kl_divergence(split.feats[rows], cache.kl_keys, problem.text_weights, chunk_rows=rows.stop - rows.start)
            kl_sums[rows] = cache.sums(kl)
            extremes.append(torch.stack([*torch.aminmax(a), *torch.aminmax(kl)]))
            del kl
            if hold:
                held.append(terms(rows, a))
            else:
                bar.update()
            del a
        lo, hi = torch.stack(extremes).aminmax(dim=0)
        rl = rescaled_sums(kl_sums, cache.counts(), (lo[2], hi[3]), (lo[0], hi[1])).neg_()
        del kl_sums
        for i, rows in enumerate(slices):
            yield Terms(rows, *(held[i] if hold else terms(rows)), rl[rows])


def grid_counts(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
                chunk_rows: int | None = None, keys: torch.Tensor | None = None) -> np.ndarray:
    """Validation top-1 hits at every grid point, int64 ``[alphas, betas, gammas]`` (gammas: 1 for Tip)."""
    gammas = grid.gammas if with_kl else None
    counts = torch.zeros(len(grid.alphas), len(grid.betas), len(gammas) if with_kl else 1,
                         dtype=torch.long, device=problem.text_weights.device)
    cache = Cache.of(problem, corrected, keys)
    desc = f"{'tipx' if with_kl else 'tip'}{'-imo' if corrected else ''} search"
    for t in split_terms(problem, problem.val, cache, corrected, with_kl, grid.betas, chunk_rows, desc):
        labels = problem.val.labels[t.rows]
        for b in range(len(grid.betas)):
            counts[:, b, :] += count_correct(t.z, t.e[b], labels, grid.alphas, t.rl, gammas)
    return counts.cpu().numpy()


def logits(problem: Problem, split: Split, corrected: bool, with_kl: bool, alpha: float, beta: float,
           gamma: float = 0.0, chunk_rows: int | None = None,
           keys: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks at one grid point (the per-point computation the search matches)."""
    cache = Cache.of(problem, corrected, keys)
    for t in split_terms(problem, split, cache, corrected, with_kl, [beta], chunk_rows, "scoring"):
        yield t.rows, affine_logits(t.z, t.e[0], alpha, t.rl, gamma)


def hits_at(problem: Problem, split: Split, corrected: bool, with_kl: bool, alpha: float,
            beta: float, gamma: float = 0.0, chunk_rows: int | None = None,
            keys: torch.Tensor | None = None) -> int:
    """Top-1 hits on ``split`` at one grid point."""
    return count_hits(logits(problem, split, corrected, with_kl, alpha, beta, gamma, chunk_rows, keys),
                      split.labels)


def run(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
        chunk_rows: int | None = None, keys: torch.Tensor | None = None) -> MethodResult:
    """Search the grid on val, then score test at the chosen point; ``keys`` as in :meth:`Cache.of`."""
    counts = grid_counts(problem, corrected, with_kl, grid, chunk_rows, keys)
    ia, ib, ig = first_best(counts)
    hp = {"alpha": float(grid.alphas[ia]), "beta": float(grid.betas[ib])}
    if with_kl:
        hp["gamma"] = float(grid.gammas[ig])
    test_hits = hits_at(problem, problem.test, corrected, with_kl, chunk_rows=chunk_rows, keys=keys, **hp)
    return MethodResult(val_acc=percent(int(counts[ia, ib, ig]), problem.val.labels.shape[0]),
                        test_acc=percent(test_hits, problem.test.labels.shape[0]), hparams=hp)
