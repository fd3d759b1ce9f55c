"""APE, training-free (Zhu et al., ICCV 2023, "Not All Features Matter").

A channel criterion picks ``feat_num`` of the D feature channels: low similarity between classes
(over the text weights and cache keys of each class) and high variance of the text weights across
classes. The logits combine three terms:
``Z + alpha * exp(-beta (1 - f' K'^T)) @ (L * exp(gamma * div))``, where ``'`` means "selected
channels, renormalised" and ``div`` is the per-key KL(one-hot || softmax(K' W')) in bits.

The criterion's mean over all cross-class pairs is computed in closed form (the official code
loops over every pair: days at ImageNet size), valid for any cache order and any shots per class.
The cache term is a per-class sum, never a product with the one-hot matrix: at each beta one
batched product gives it for every gamma. The text
weights are the features file's own (the project templates), not the paper's CuPL prompts, so the
results are labelled "no CuPL". The IMO variant changes only ``f' K'^T``; the channels, ``div`` and
``Z`` stay on original features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from .common import MethodOptions, MethodResult, Problem, Split, chunks, class_slots, percent, zeroshot_logits
from .metrics import classification_metrics
from .official import APE_DEFAULT, ApeConfig, ape_config
from .search import count_correct, first_best

CRITERION_WEIGHTS = APE_DEFAULT.weights
# Search: beta_i = i (s0 - 0.1) / n0 + 0.1 (i < n0), alpha likewise, gamma_l = l s2 / n2: endpoints excluded.
SEARCH_SCALE = APE_DEFAULT.scale
SEARCH_STEP = APE_DEFAULT.step
NO_CUPL = "templates, no CuPL"
# Elements of one counting block (rows x classes), see :func:`_count`.
COUNT_BLOCK = 1 << 21


def default_feat_num(dim: int, feat_num_1024: int = APE_DEFAULT.feat_num_1024) -> int:
    """``feat_num_1024`` of 1024 channels (default 700, the median official value), scaled to the
    feature width (the official configs are for RN50's D = 1024)."""
    return max(1, min(dim, round(dim * feat_num_1024 / 1024)))


def settings(problem: Problem, options: MethodOptions | None = None) -> tuple[ApeConfig, int]:
    """The configuration ``options`` choose (clipimo's or the dataset's official one) and its
    channel count at this feature width."""
    cfg = ape_config(options or MethodOptions())
    return cfg, default_feat_num(problem.text_weights.shape[0], cfg.feat_num_1024)


def search_grid(scale=SEARCH_SCALE, step=SEARCH_STEP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(betas, alphas, gammas) as the official loops generate them."""
    betas = np.array([i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])])
    alphas = np.array([j * (scale[1] - 0.1) / step[1] + 0.1 for j in range(step[1])])
    gammas = np.array([k * scale[2] / step[2] for k in range(step[2])])
    return betas, alphas, gammas


def channel_criterion(text_weights: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                      weights: tuple[float, float] = CRITERION_WEIGHTS) -> torch.Tensor:
    """``-w0 * sim + w1 * var`` per channel ``[D]`` (float64).

    ``sim[d]`` is the mean of ``u[d] v[d]`` over ordered pairs of vectors from different classes,
    each class holding its text weight and its keys: ``(T^2 - sum_c S_c^2) / (n^2 - sum_c n_c^2)``
    with ``S_c`` the class sums, ``T`` their total, ``n_c`` the class sizes. ``var`` is the unbiased
    variance of the text weights over classes.
    """
    w, k = text_weights.double(), keys.double()
    num_classes = w.shape[1]
    sums = w.T.clone().index_add_(0, labels, k)  # [C, D]
    sizes = 1.0 + torch.bincount(labels, minlength=num_classes).double()
    total = sums.sum(0)
    sim = (total ** 2 - (sums ** 2).sum(0)) / (sizes.sum() ** 2 - (sizes ** 2).sum())
    return -weights[0] * sim + weights[1] * w.var(dim=1)


@dataclass(frozen=True)
class Refined:
    """Selected channels ``idx``, refined keys for the affinity and each key's weight exponent
    ``div``, both grouped by class (stable), and ``slots`` ``[C, kmax]``: the keys of each class,
    padded with ``N`` (a zero column), or None when every class has ``kmax`` keys (then a
    ``[rows, N]`` matrix is ``[rows, C, kmax]`` as it stands: no gather per beta)."""

    idx: torch.Tensor
    keys: torch.Tensor
    div: torch.Tensor
    corrected: bool
    slots: torch.Tensor | None
    num_classes: int

    def slotted(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` per key -> ``[..., C, kmax]`` per class slot (0 on padding)."""
        if self.slots is None:
            return x.view(*x.shape[:-1], self.num_classes, -1)
        return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], -1)[..., self.slots]


def refine(problem: Problem, corrected: bool, feat_num: int,
           weights: tuple[float, float] = CRITERION_WEIGHTS) -> Refined:
    crit = channel_criterion(problem.text_weights, problem.cache_keys, problem.cache_labels, weights)
    idx = crit.topk(feat_num).indices
    order = torch.argsort(problem.cache_labels, stable=True)
    labels = problem.cache_labels[order]
    text = F.normalize(problem.text_weights[idx], dim=0)
    keys = F.normalize(problem.cache_keys[order][:, idx], dim=1)
    p = torch.softmax(keys @ text, dim=1)  # raw cosines, no logit scale
    p_label = p.gather(1, labels[:, None]).squeeze(1)
    div = torch.log2((1 + 1e-6) / (p_label + 1e-6))
    affinity_keys = F.normalize(problem.keys(corrected)[order][:, idx], dim=1) if corrected else keys
    slots = class_slots(labels, problem.num_classes)
    rectangular = slots.numel() == len(labels) and bool((slots.flatten() == torch.arange(len(labels))).all())
    return Refined(idx, affinity_keys, div, corrected, None if rectangular else slots, problem.num_classes)


def _terms(problem: Problem, split: Split, ref: Refined, chunk_rows: int | None):
    """``(rows, Z, 1 - f' K'^T)`` chunks."""
    for rows in chunks(split.labels.shape[0], ref.keys.shape[0], chunk_rows):
        query = F.normalize(split.query(ref.corrected)[rows][:, ref.idx], dim=1)
        yield rows, zeroshot_logits(problem, split.feats[rows]), torch.rsub(query @ ref.keys.T, 1)


def slot_weights(ref: Refined, gammas) -> torch.Tensor:
    """``[G, C, kmax]`` per-key weights ``exp(gamma * div)`` in class slots (0 on padding)."""
    return ref.slotted(torch.stack([torch.exp(float(g) * ref.div) for g in gammas]))


def cache_terms(distance: torch.Tensor, beta: float, weights: torch.Tensor, ref: Refined,
                buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(-beta d) @ (L * w_g)`` for every weight vector at once, ``[G, rows, C]``, from
    ``d = 1 - A`` and :func:`slot_weights`: one batched product over classes (each class's keys
    against the G weight vectors), not G passes over the affinities. ``buffer`` (shaped like
    ``distance``) spares an allocation per beta."""
    affinity = torch.mul(distance, -beta, out=torch.empty_like(distance) if buffer is None else buffer).exp_()
    return torch.einsum("rck,gck->grc", ref.slotted(affinity), weights)


def logits(problem: Problem, split: Split, ref: Refined, alpha: float, beta: float, gamma: float,
           chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    weights = slot_weights(ref, [gamma])
    for rows, z, distance in _terms(problem, split, ref, chunk_rows):
        yield rows, z + alpha * cache_terms(distance, beta, weights, ref)[0]


def _count(z: torch.Tensor, terms: torch.Tensor, labels: torch.Tensor, alphas: np.ndarray) -> torch.Tensor:
    """Hits of ``z + alpha * e`` for every alpha and every ``e`` in ``terms`` ``[G, rows, C]``: ``[alphas, G]``,
    by the pruned exact :func:`count_correct`, all terms in one call per block of rows (what
    depends on ``z`` only is computed once per block). A block's ``[rows, C]`` passes stay within
    :data:`COUNT_BLOCK` elements, about a core's share of the CPU cache: at 2,000 classes x 4,000
    rows the counter ran 1.6x as long on the whole chunk. (Evaluating every point instead, as the
    test pass does for one, took 4-6x as long even on 30-class tasks.)
    """
    step = max(1, COUNT_BLOCK // z.shape[1])
    return sum(count_correct(z[r:r + step], terms[:, r:r + step], labels[r:r + step], alphas)[..., 0].T
               for r in range(0, z.shape[0], step))


def val_counts(problem: Problem, ref: Refined, betas, alphas, gammas, chunk_rows: int | None = None) -> torch.Tensor:
    """Validation hits at every (beta, alpha, gamma): int64 ``[betas, alphas, gammas]``."""
    weights = slot_weights(ref, gammas)
    counts = torch.zeros(len(betas), len(alphas), len(gammas), dtype=torch.long)
    for rows, z, distance in _terms(problem, problem.val, ref, chunk_rows):
        labels, buffer = problem.val.labels[rows], torch.empty_like(distance)
        for b, beta in enumerate(betas):
            counts[b] += _count(z, cache_terms(distance, float(beta), weights, ref, buffer), labels, alphas).cpu()
    return counts


def run(problem: Problem, corrected: bool = False, options: MethodOptions | None = None,
        feat_num: int | None = None, grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        chunk_rows: int | None = None) -> MethodResult:
    """Search beta -> alpha -> gamma on val (ties to the first in that order); hparams
    ``{"alpha", "beta", "gamma"}``. ``options`` choose clipimo's or the dataset's official
    configuration (channels, criterion weights, grid); ``feat_num`` and ``grid`` (betas, alphas,
    gammas) override it."""
    options = options or MethodOptions()
    cfg, cfg_feat_num = settings(problem, options)
    feat_num = feat_num or cfg_feat_num
    ref = refine(problem, corrected, feat_num, cfg.weights)
    betas, alphas, gammas = search_grid(cfg.scale, cfg.step) if grid is None else grid
    counts = val_counts(problem, ref, betas, alphas, gammas, chunk_rows)
    ib, ia, ig = first_best(counts)
    hp = {"alpha": float(alphas[ia]), "beta": float(betas[ib]), "gamma": float(gammas[ig])}
    test = classification_metrics(logits(problem, problem.test, ref, chunk_rows=chunk_rows, **hp), problem.test.labels)
    return MethodResult(
        val_acc=percent(int(counts[ib, ia, ig]), problem.val.labels.shape[0]),
        test_acc=test["top1"],
        hparams=hp,
        test_top5=test["top5"],
        test_mean_per_class_recall=test["mean_per_class_recall"],
        meta={"config": options.ape_config, "feat_num": feat_num, "criterion_weights": list(cfg.weights),
              "search_scale": list(cfg.scale), "search_step": list(cfg.step), "text": NO_CUPL},
    )
