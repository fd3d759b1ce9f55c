"""Tip-Adapter and Tip-X: cache affinities, the KL term, and their exact grid search.

The keys are grouped by class once (a stable sort of the labels), so every ``X L`` with one-hot
values ``L`` is a segment sum (:func:`~clipimo.methods.common.class_sums`), about ``C`` times less
work than the product. Terms are built one query chunk at a time (an ImageNet-size split never
holds a full [queries, cache] matrix): ``A`` once per chunk, ``exp(-beta (1 - A)) L`` once per
(chunk, beta), and all (alpha, gamma) pairs of all betas are scored together by
:func:`clipimo.methods.search.count_correct`. Tip-X's ``R`` is an affine map of ``KL`` whose coefficients
are the split's global extremes, so ``R L`` is the same map applied to the per-class sums
``KL L``: one pass collects those sums and the extremes, then the map is applied.

:func:`run_many` runs several of Tip, Tip-IMO, Tip-X and Tip-X-IMO on one problem and shares what
they have in common: the affinities and ``exp(-beta (1 - A)) L`` of a stream (Tip and Tip-X on
it), the KL sums of a split (both Tip-X variants), and one pass over the test split per stream at
the chosen points, which also gives top-5 and mean per-class recall.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .common import MethodResult, Problem, Split, chunks, class_sums, percent, zeroshot_logits
from .metrics import classification_metrics
from .search import PAPER_GRID, Grid, affine_logits, count_correct, first_best

KL_TEMPERATURE = 0.5
# Tip-X needs a split's extremes before its first ``R L``: up to this many elements of
# ``exp(-beta (1 - A)) L`` (all betas, whole split: 0.8 GB for ImageNet's 10,000 val queries) are
# kept from the pass that finds them; larger splits recompute ``A`` in a second pass instead.
# The test pass keeps as many (the betas chosen on one stream) to score every method from it.
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


def kl_chunks(query: torch.Tensor, keys: torch.Tensor, text_weights: torch.Tensor,
              slices: Sequence[slice]) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, KL[rows])`` with ``KL[i, j] = KL(p_i || q_j)``, p/q = softmax of the text logits / 0.5.

    As matrix products, ``sum p log p - p @ (log q)^T``; the keys' side is computed once. With more
    classes than feature dimensions (ImageNet: 1,000 > 512), ``p @ (log q)^T`` is taken through
    the features, ``(p W^T / 0.5) K^T - (sum p) lse(q)``: the same value, ``C / D`` times fewer
    multiply-adds.
    """
    key_logits = keys @ text_weights / KL_TEMPERATURE
    lse = torch.logsumexp(key_logits, dim=1)
    through_features = text_weights.shape[1] > text_weights.shape[0]
    log_q = None if through_features else key_logits - lse[:, None]
    del key_logits
    for rows in slices:
        log_p = torch.log_softmax(query[rows] @ text_weights / KL_TEMPERATURE, dim=1)
        p = log_p.exp()
        if through_features:
            cross = (p @ text_weights.T / KL_TEMPERATURE) @ keys.T - p.sum(1, keepdim=True) * lse
        else:
            cross = p @ log_q.T
        yield rows, torch.sub((p * log_p).sum(1, keepdim=True), cross, out=cross)


def kl_divergence(query: torch.Tensor, keys: torch.Tensor, text_weights: torch.Tensor,
                  chunk_rows: int | None = None) -> torch.Tensor:
    """The whole ``[n, N]`` KL matrix of :func:`kl_chunks`; every row is filled (the original loop
    left the last ``n mod 100`` rows at zero)."""
    out = torch.empty(query.shape[0], keys.shape[0], dtype=query.dtype, device=query.device)
    for rows, kl in kl_chunks(query, keys, text_weights, list(chunks(query.shape[0], keys.shape[0], chunk_rows))):
        out[rows] = kl
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
class KLSums:
    """One split's ``KL L`` ``[n, C]`` and the extremes of ``KL`` over the split (Tip-X's rescale)."""

    sums: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def kl_sums(problem: Problem, split: Split, cache: Cache, chunk_rows: int | None = None,
            bar: tqdm | None = None) -> KLSums:
    """The KL sums of ``split`` (original features and keys: the same for both streams)."""
    n, width = split.labels.shape[0], cache.keys.shape[0]
    sums = torch.empty(n, cache.num_classes, dtype=cache.keys.dtype, device=cache.keys.device)
    extremes = []
    for rows, kl in kl_chunks(split.feats, cache.kl_keys, problem.text_weights, list(chunks(n, width, chunk_rows))):
        sums[rows] = cache.sums(kl)
        extremes.append(torch.stack(torch.aminmax(kl)))
        _step(bar)
    lo, hi = torch.stack(extremes).aminmax(dim=0)
    return KLSums(sums, lo[0], hi[1])


@dataclass(frozen=True)
class Terms:
    """One query chunk: zero-shot ``Z``, ``exp(-beta (1 - A)) L`` per beta, and Tip-X's ``(-R) L``."""

    rows: slice
    z: torch.Tensor
    e: torch.Tensor
    rl: torch.Tensor | None


def split_terms(problem: Problem, split: Split, cache: Cache, corrected: bool, with_kl: bool,
                betas: Sequence[float] | np.ndarray, chunk_rows: int | None = None,
                bar: tqdm | None = None, kl: KLSums | None = None) -> Iterator[Terms]:
    """Chunks of one split's terms (``e`` is ``[len(betas), rows, C]``); ``kl`` is the split's
    :func:`kl_sums` when already at hand.

    Tip-X's rescale needs the split's global extremes of ``A``: a first pass collects them and,
    within :data:`HOLD_ELEMENTS`, keeps the other terms; otherwise ``A`` is recomputed in a second
    pass. ``bar`` advances once per chunk and pass (:func:`passes` counts them).
    """
    n, num_classes = split.labels.shape[0], cache.num_classes
    slices = list(chunks(n, cache.keys.shape[0], chunk_rows))

    def terms(rows: slice, a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        a = split.query(corrected)[rows] @ cache.keys.T if a is None else a
        distance = torch.rsub(a, 1)
        del a
        buffer = torch.empty_like(distance)
        e = torch.stack([cache_logits(distance, float(beta), cache, buffer) for beta in betas])
        _step(bar)
        return zeroshot_logits(problem, split.feats[rows]), e

    if not with_kl:
        for rows in slices:
            yield Terms(rows, *terms(rows), None)
        return
    kl = kl or kl_sums(problem, split, cache, chunk_rows, bar)
    hold = len(betas) * n * num_classes <= HOLD_ELEMENTS
    extremes, held = [], []
    for rows in slices:
        a = split.query(corrected)[rows] @ cache.keys.T
        extremes.append(torch.stack(torch.aminmax(a)))
        if hold:
            held.append(terms(rows, a))
        else:
            _step(bar)
        del a
    lo, hi = torch.stack(extremes).aminmax(dim=0)
    rl = rescaled_sums(kl.sums, cache.counts(), (kl.lo, kl.hi), (lo[0], hi[1])).neg_()
    for i, rows in enumerate(slices):
        yield Terms(rows, *(held[i] if hold else terms(rows)), rl[rows])
        if hold:
            held[i] = None


def passes(split: Split, cache: Cache, with_kl: bool, num_betas: int, kl_at_hand: bool) -> int:
    """How many chunk steps :func:`split_terms` takes (for a progress bar's total)."""
    n = split.labels.shape[0]
    per_pass = len(list(chunks(n, cache.keys.shape[0])))  # the default chunking (a bar's estimate)
    if not with_kl:
        return per_pass
    held = num_betas * n * cache.num_classes <= HOLD_ELEMENTS
    return per_pass * ((1 if held else 2) + (0 if kl_at_hand else 1))


def _step(bar: tqdm | None) -> None:
    if bar is not None:
        bar.update()


def _progress(total: int, desc: str) -> tqdm:
    """A bar on a terminal only, after :data:`PROGRESS_DELAY` seconds."""
    return tqdm(total=total, desc=desc, unit="chunk", disable=None, delay=PROGRESS_DELAY, leave=False)


def variant_name(corrected: bool, with_kl: bool) -> str:
    return f"{'tipx' if with_kl else 'tip'}{'-imo' if corrected else ''}"


def grid_counts(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
                chunk_rows: int | None = None, keys: torch.Tensor | None = None) -> np.ndarray:
    """Validation top-1 hits at every grid point, int64 ``[alphas, betas, gammas]`` (gammas: 1 for Tip)."""
    return _val_counts(problem, [(corrected, with_kl)], grid, chunk_rows, keys)[(corrected, with_kl)]


def _val_counts(problem: Problem, variants: Sequence[tuple[bool, bool]], grid: Grid,
                chunk_rows: int | None, keys: torch.Tensor | None) -> dict[tuple[bool, bool], np.ndarray]:
    """:func:`grid_counts` of several variants, sharing a stream's terms and the split's KL sums."""
    val, labels = problem.val, problem.val.labels
    streams = _streams(variants)
    caches = {corrected: Cache.of(problem, corrected, keys) for corrected in streams}
    any_kl = any(with_kl for _, with_kl in variants)
    total = sum(passes(val, caches[c], True in kinds, len(grid.betas), True) for c, kinds in streams.items())
    counts = {}
    with _progress(total + (passes(val, caches[next(iter(streams))], False, 0, True) if any_kl else 0),
                   f"{','.join(variant_name(*v) for v in variants)} search") as bar:
        kl = kl_sums(problem, val, caches[next(iter(streams))], chunk_rows, bar) if any_kl else None
        for corrected, kinds in streams.items():
            for t in split_terms(problem, val, caches[corrected], corrected, True in kinds, grid.betas,
                                 chunk_rows, bar, kl):
                for with_kl in kinds:
                    hits = count_correct(t.z, t.e, labels[t.rows], grid.alphas, t.rl if with_kl else None,
                                         grid.gammas if with_kl else None)  # [betas, alphas, gammas]
                    key = (corrected, with_kl)
                    counts[key] = hits if key not in counts else counts[key] + hits
    return {v: counts[v].permute(1, 0, 2).cpu().numpy() for v in variants}


def _streams(variants: Sequence[tuple[bool, bool]]) -> dict[bool, list[bool]]:
    """``{corrected: [with_kl, ...]}`` in first-seen order."""
    streams: dict[bool, list[bool]] = {}
    for corrected, with_kl in variants:
        if with_kl not in streams.setdefault(corrected, []):
            streams[corrected].append(with_kl)
    return streams


def run_many(problem: Problem, variants: Sequence[tuple[bool, bool]], grid: Grid = PAPER_GRID,
             chunk_rows: int | None = None, keys: torch.Tensor | None = None) -> dict[tuple[bool, bool], MethodResult]:
    """Search each ``(corrected, with_kl)`` variant on val, then score test at each chosen point
    (top-1, top-5, mean per-class recall), sharing the work the variants have in common."""
    variants = list(dict.fromkeys(variants))
    counts = _val_counts(problem, variants, grid, chunk_rows, keys)
    chosen = {}
    for v in variants:
        ia, ib, ig = first_best(counts[v])
        hp = {"alpha": float(grid.alphas[ia]), "beta": float(grid.betas[ib])}
        if v[1]:
            hp["gamma"] = float(grid.gammas[ig])
        chosen[v] = (hp, int(counts[v][ia, ib, ig]))
    scores = _test_scores(problem, {v: hp for v, (hp, _) in chosen.items()}, chunk_rows, keys)
    n_val = problem.val.labels.shape[0]
    return {v: MethodResult(val_acc=percent(hits, n_val), test_acc=scores[v]["top1"], hparams=hp,
                            test_top5=scores[v]["top5"], test_mean_per_class_recall=scores[v]["mean_per_class_recall"])
            for v, (hp, hits) in chosen.items()}


def _test_scores(problem: Problem, points: dict[tuple[bool, bool], dict[str, float]],
                 chunk_rows: int | None, keys: torch.Tensor | None) -> dict[tuple[bool, bool], dict[str, float]]:
    """Test metrics of each variant at its point: per stream, one pass computes the terms of all
    its chosen betas (held within :data:`HOLD_ELEMENTS`, else in groups), then each variant's
    logits are formed chunk by chunk."""
    test = problem.test
    n, num_classes = test.labels.shape[0], problem.num_classes
    streams = _streams(list(points))
    caches = {corrected: Cache.of(problem, corrected, keys) for corrected in streams}
    any_kl = any(with_kl for _, with_kl in points)
    groups = []
    for corrected, kinds in streams.items():
        mine = [(corrected, with_kl) for with_kl in kinds]
        betas = list(dict.fromkeys(points[v]["beta"] for v in mine))
        size = max(1, HOLD_ELEMENTS // max(n * num_classes, 1))
        for i in range(0, len(betas), size):
            part = betas[i:i + size]
            groups.append((corrected, [v for v in mine if points[v]["beta"] in part], part))
    total = sum(passes(test, caches[c], any(v[1] for v in vs), len(b), True) for c, vs, b in groups)
    scores = {}
    with _progress(total + (passes(test, caches[groups[0][0]], False, 0, True) if any_kl else 0),
                   f"{','.join(variant_name(*v) for v in points)} test") as bar:
        kl = kl_sums(problem, test, caches[groups[0][0]], chunk_rows, bar) if any_kl else None
        for corrected, mine, betas in groups:
            terms = list(split_terms(problem, test, caches[corrected], corrected, any(v[1] for v in mine), betas,
                                     chunk_rows, bar, kl))
            for v in mine:
                hp = points[v]
                b = betas.index(hp["beta"])
                scores[v] = classification_metrics(
                    ((t.rows, affine_logits(t.z, t.e[b], hp["alpha"], t.rl if v[1] else None, hp.get("gamma", 0.0)))
                     for t in terms), test.labels)
            del terms
    return scores


def logits(problem: Problem, split: Split, corrected: bool, with_kl: bool, alpha: float, beta: float,
           gamma: float = 0.0, chunk_rows: int | None = None,
           keys: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks at one grid point (the per-point computation the search matches)."""
    cache = Cache.of(problem, corrected, keys)
    for t in split_terms(problem, split, cache, corrected, with_kl, [beta], chunk_rows):
        yield t.rows, affine_logits(t.z, t.e[0], alpha, t.rl, gamma)


def run(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID,
        chunk_rows: int | None = None, keys: torch.Tensor | None = None) -> MethodResult:
    """Search the grid on val, then score test at the chosen point; ``keys`` as in :meth:`Cache.of`."""
    return run_many(problem, [(corrected, with_kl)], grid, chunk_rows, keys)[(corrected, with_kl)]
