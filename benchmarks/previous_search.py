"""The previous search (main before issue 14's second part), kept for ``bench_sweep.py``'s baseline only.

Per method and per beta: the block-bounded exact count over the (alpha, gamma) grid, Tip-X's KL
pass per stream and method, the test split scored once for top-1 and again for top-5 / recall
(``metrics_at``). The term formulas are the library's (``cache_logits``, ``rescaled_sums``,
``zeroshot_logits``), so both implementations see the same terms up to chunking.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clipimo.methods import gda
from clipimo.methods.cache import Cache, Terms, cache_logits, rescaled_sums
from clipimo.methods.common import MethodResult, Problem, Split, chunks, count_hits, percent, zeroshot_logits
from clipimo.methods.search import PAPER_GRID, Grid, affine_logits, first_best

PRUNE_RTOL = 1e-4
EVAL_BUDGET = 1 << 24
BLOCKS = (10, 10)
KL_TEMPERATURE = 0.5
HOLD_ELEMENTS = 1 << 28
PROGRESS_DELAY = 2.0


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


def grid_counts(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID) -> np.ndarray:
    gammas = grid.gammas if with_kl else None
    counts = torch.zeros(len(grid.alphas), len(grid.betas), len(gammas) if with_kl else 1,
                         dtype=torch.long, device=problem.text_weights.device)
    cache = Cache.of(problem, corrected)
    for t in split_terms(problem, problem.val, cache, corrected, with_kl, grid.betas):
        labels = problem.val.labels[t.rows]
        for b in range(len(grid.betas)):
            counts[:, b, :] += count_correct(t.z, t.e[b], labels, grid.alphas, t.rl, gammas)
    return counts.cpu().numpy()


def cache_logits_at(problem: Problem, split: Split, corrected: bool, with_kl: bool, hp: dict) -> Iterator[tuple]:
    cache = Cache.of(problem, corrected)
    for t in split_terms(problem, split, cache, corrected, with_kl, [hp["beta"]], desc="scoring"):
        yield t.rows, affine_logits(t.z, t.e[0], hp["alpha"], t.rl, hp.get("gamma", 0.0))


def cache_run(problem: Problem, corrected: bool, with_kl: bool, grid: Grid = PAPER_GRID) -> MethodResult:
    counts = grid_counts(problem, corrected, with_kl, grid)
    ia, ib, ig = first_best(counts)
    hp = {"alpha": float(grid.alphas[ia]), "beta": float(grid.betas[ib])}
    if with_kl:
        hp["gamma"] = float(grid.gammas[ig])
    test_hits = count_hits(cache_logits_at(problem, problem.test, corrected, with_kl, hp), problem.test.labels)
    return MethodResult(val_acc=percent(int(counts[ia, ib, ig]), problem.val.labels.shape[0]),
                        test_acc=percent(test_hits, problem.test.labels.shape[0]), hparams=hp)


def gda_run(problem: Problem, corrected: bool) -> MethodResult:
    weight, bias = gda.fit_on_views(problem, corrected)
    alphas = gda.GDA_ALPHAS
    counts = torch.zeros(len(alphas), dtype=torch.long, device=weight.device)
    for rows, z, g in gda._terms(problem, problem.val, corrected, weight, bias, None):
        counts += count_correct(z, g, problem.val.labels[rows], alphas)[:, 0]
    (best,) = first_best(counts)
    alpha = float(alphas[best])
    test_hits = count_hits(gda.logits(problem, problem.test, corrected, alpha, (weight, bias)), problem.test.labels)
    return MethodResult(val_acc=percent(int(counts[best]), problem.val.labels.shape[0]),
                        test_acc=percent(test_hits, problem.test.labels.shape[0]), hparams={"alpha": alpha})


def zs_run(problem: Problem) -> MethodResult:
    def hits(split):
        return count_hits(((rows, zeroshot_logits(problem, split.feats[rows]))
                           for rows in chunks(split.labels.shape[0], problem.num_classes)), split.labels)
    return MethodResult(val_acc=percent(hits(problem.val), problem.val.labels.shape[0]),
                        test_acc=percent(hits(problem.test), problem.test.labels.shape[0]))


# name -> run; the previous run_methods then scored top-5 / recall with metrics_at (a second test pass).
RUNS = {
    "zs": zs_run,
    "tip": lambda p: cache_run(p, False, False),
    "tip-imo": lambda p: cache_run(p, True, False),
    "tipx": lambda p: cache_run(p, False, True),
    "tipx-imo": lambda p: cache_run(p, True, True),
    "gda": lambda p: gda_run(p, False),
    "gda-imo": lambda p: gda_run(p, True),
}


def logits_at(problem: Problem, split: Split, name: str, hp: dict) -> Iterator[tuple]:
    """The previous ``metrics_at``'s logits for the seven methods."""
    base, corrected = name.removesuffix("-imo"), name.endswith("-imo")
    if base == "zs":
        return ((rows, zeroshot_logits(problem, split.feats[rows])) for rows in chunks(split.labels.shape[0], problem.num_classes))
    if base == "gda":
        return gda.logits(problem, split, corrected, hp["alpha"])
    return cache_logits_at(problem, split, corrected, base == "tipx", hp)
