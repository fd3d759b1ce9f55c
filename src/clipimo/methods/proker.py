"""ProKeR (Bendou et al., CVPR 2025): proximal kernel ridge regression of the zero-shot residual.

As the official code computes it (docs/methods.md, "ProKeR"): with S the support views, concatenated
(rows ``e*N + i``), Y their one-hot labels over all C = W.shape[1] classes and the UNSCALED zero-shot
logits ``Z0(x) = x W``,
``alpha = solve(K_SS / lmbda + I, Y - Z0(S)) = lmbda (K_SS + lmbda I)^-1 (Y - Z0(S))`` and
``logits(x) = Z0(x) + k(x, S) alpha`` with ``k(x, y) = exp(-beta (1 - x.y))``.

The search is exact but fast: with many lmbdas per beta (the official DTD/EuroSAT/Flowers grids'
100), one ``eigh(K_SS) = Q diag(l) Q^T`` per beta, after which every lmbda costs one product,
``alpha = Q diag(lmbda / (l + lmbda)) Q^T R``, with ``k(x, S) Q`` computed once per beta and query
chunk; with few (clipimo's 10), one Cholesky solve per point, which is cheaper then. Everything is float64. The IMO variant puts corrected features in every
kernel argument and nothing else: the residual and ``Z0`` stay on original features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .common import MethodOptions, MethodResult, Problem, Split, chunks, percent
from .metrics import classification_metrics
from .official import PROKER_OFFICIAL, lookup
from .search import first_best

# ``auto`` concatenates every view while the kernel has at most this many rows (K_SS: 8 GiB in
# float64), and falls back to the averaged cache keys beyond it (ImageNet 16-shot: 160,000 rows).
MAX_ALL_VIEWS = 32768
# A beta's lmbdas share one eigendecomposition from this many on; fewer get a Cholesky solve each.
EIGH_MIN_LMBDAS = 40
# Bytes of Cholesky coefficients [N, C] held at once, so that their lmbdas share each val chunk's
# cross-kernel (ImageNet 16-shot: 128 MB per lmbda, all 10 of a beta).
HOLD_COEFFICIENTS = 3 << 29
# (start, stop, num) of torch.linspace for beta and lmbda.
DEFAULT_GRID = ((0.1, 10.0, 20), (0.001, 1.0, 10))


def linspace(start: float, stop: float, num: int) -> np.ndarray:
    """The official float32 ``torch.linspace`` values, as float64."""
    return torch.linspace(start, stop, num, dtype=torch.float32).double().numpy()


def grid_for(options: MethodOptions) -> tuple[np.ndarray, np.ndarray]:
    """(betas, lmbdas): the clipimo default, or the official per-dataset grid."""
    spec = DEFAULT_GRID if options.proker_grid == "default" else lookup(PROKER_OFFICIAL, options.dataset,
                                                                        "--proker-grid")
    return linspace(*spec[0]), linspace(*spec[1])


@dataclass(frozen=True)
class Support:
    """The regression's support set in float64: ``feats`` (original, for the residual), ``kernel_feats``
    (the kernel's argument: corrected for the IMO variant), one-hot ``targets`` and the views mode."""

    feats: torch.Tensor
    kernel_feats: torch.Tensor
    targets: torch.Tensor
    mode: str
    corrected: bool


def pick_views(requested: str, passes: int, images: int) -> str:
    """The views mode used: ``auto`` is ``all`` while ``passes * images <= MAX_ALL_VIEWS``, else ``mean``."""
    if requested != "auto":
        return requested
    return "all" if passes * images <= MAX_ALL_VIEWS else "mean"


def support_set(problem: Problem, corrected: bool, views: str = "auto", name: str = "proker") -> Support:
    """Every view concatenated (``all``), or the averaged cache keys (``mean``); ``auto`` picks
    ``all`` while ``E * N <= MAX_ALL_VIEWS``."""
    labels = problem.cache_labels
    if views != "mean":
        original = problem.views(False, name)
        views = pick_views(views, *original.shape[:2])
    if views == "mean":
        feats, kernel_feats = problem.cache_keys, problem.keys(corrected)
    else:
        e, n, d = original.shape
        feats = original.reshape(e * n, d)
        kernel_feats = problem.views(corrected, name).reshape(e * n, d)
        labels = labels.repeat(e)
    targets = torch.nn.functional.one_hot(labels, problem.num_classes).double()
    feats = feats.double()
    return Support(feats, kernel_feats.double() if corrected else feats, targets, views, corrected)


def kernel(x: torch.Tensor, s: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-beta (1 - x s^T))`` (the official ``RBF_Kernel`` on unit vectors)."""
    return torch.exp(-beta * (1.0 - x @ s.T))


@dataclass(frozen=True)
class Basis:
    """``K_SS = Q diag(evals) Q^T`` at one beta, and the residual in that basis, ``Q^T R``."""

    beta: float
    q: torch.Tensor
    evals: torch.Tensor
    residual: torch.Tensor

    def coefficients(self, lmbda: float) -> torch.Tensor:
        """``diag(lmbda / (l + lmbda)) Q^T R``: ``alpha = Q @ this``."""
        return (lmbda / (self.evals + lmbda))[:, None] * self.residual


def basis(sup: Support, text_weights: torch.Tensor, beta: float) -> Basis:
    evals, q = torch.linalg.eigh(kernel(sup.kernel_feats, sup.kernel_feats, beta))
    residual = sup.targets - sup.feats @ text_weights
    return Basis(beta, q, evals.clamp(min=0), q.T @ residual)


def coefficients(gram: torch.Tensor, residual: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``alpha = lmbda (K_SS + lmbda I)^-1 R`` ``[n, C]`` at one point by a Cholesky solve, or
    through the eigenbasis should the shifted kernel not factor."""
    shifted = gram.clone()
    shifted.diagonal().add_(lmbda)
    factor, info = torch.linalg.cholesky_ex(shifted)
    del shifted
    if int(info) != 0:
        evals, q = torch.linalg.eigh(gram)
        return q @ ((lmbda / (evals.clamp(min=0) + lmbda))[:, None] * (q.T @ residual))
    return lmbda * torch.cholesky_solve(residual, factor)


def _query_chunks(problem: Problem, split: Split, corrected: bool, width: int, chunk_rows: int | None):
    """``(rows, Z0, kernel query)`` in float64: Z0 on original features, the query as the kernel sees it."""
    w = problem.text_weights.double()
    for rows in chunks(split.labels.shape[0], width, chunk_rows):
        yield rows, split.feats[rows].double() @ w, split.query(corrected)[rows].double()


def grid_counts(problem: Problem, sup: Support, betas: np.ndarray, lmbdas: np.ndarray,
                chunk_rows: int | None = None) -> np.ndarray:
    """Validation top-1 hits at every (beta, lmbda), int64 ``[len(betas), len(lmbdas)]``.

    Per beta, :data:`EIGH_MIN_LMBDAS` or more lmbdas share one ``eigh``; fewer are one Cholesky
    solve each (measured: an ``eigh`` costs 20-45 Cholesky factorisations on CPU, not the ~12 its
    flop count suggests). Both are exact; they differ only in float64 rounding. What does not
    depend on lmbda is computed once per beta (the kernel, each val chunk's cross-kernel, shared
    by up to :data:`HOLD_COEFFICIENTS` bytes of coefficients), and what depends on neither once
    (the residual, ``Z0`` and the queries of val).
    """
    w = problem.text_weights.double()
    labels = problem.val.labels
    counts = np.zeros((len(betas), len(lmbdas)), dtype=np.int64)
    width = sup.feats.shape[0]
    queries = list(_query_chunks(problem, problem.val, sup.corrected, width, chunk_rows))
    residual = sup.targets - sup.feats @ w
    group = max(1, HOLD_COEFFICIENTS // max(residual.numel() * residual.element_size(), 1))
    for b, beta in enumerate(betas):
        if len(lmbdas) >= EIGH_MIN_LMBDAS:
            base = basis(sup, w, float(beta))
            for rows, z0, x in queries:
                projected = kernel(x, sup.kernel_feats, float(beta)) @ base.q
                for j, lmbda in enumerate(lmbdas):  # [n, C] per lmbda, not all at once: ImageNet's is 128 MB
                    hits = (z0 + projected @ base.coefficients(float(lmbda))).argmax(1) == labels[rows]
                    counts[b, j] += int(hits.sum())
            continue
        gram = kernel(sup.kernel_feats, sup.kernel_feats, float(beta))
        for start in range(0, len(lmbdas), group):
            alphas = [coefficients(gram, residual, float(lmbda)) for lmbda in lmbdas[start:start + group]]
            for rows, z0, x in queries:
                cross = kernel(x, sup.kernel_feats, float(beta))
                for j, alpha in enumerate(alphas, start):
                    counts[b, j] += int(((z0 + cross @ alpha).argmax(1) == labels[rows]).sum())
        del gram
    return counts


def fit(problem: Problem, sup: Support, beta: float, lmbda: float) -> torch.Tensor:
    """The coefficients at one (beta, lmbda): one Cholesky solve, no eigenbasis."""
    w = problem.text_weights.double()
    return coefficients(kernel(sup.kernel_feats, sup.kernel_feats, beta), sup.targets - sup.feats @ w, lmbda)


def apply(problem: Problem, split: Split, sup: Support, beta: float, alpha: torch.Tensor,
          chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks of fitted coefficients ``alpha`` (:func:`fit`)."""
    for rows, z0, x in _query_chunks(problem, split, sup.corrected, sup.feats.shape[0], chunk_rows):
        yield rows, z0 + kernel(x, sup.kernel_feats, beta) @ alpha


def logits(problem: Problem, split: Split, sup: Support, beta: float, lmbda: float,
           chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks at one (beta, lmbda)."""
    return apply(problem, split, sup, beta, fit(problem, sup, beta, lmbda), chunk_rows)


def run(problem: Problem, corrected: bool = False, options: MethodOptions = MethodOptions(),
        chunk_rows: int | None = None) -> MethodResult:
    """Search (beta, lmbda) on val, beta-major with ties to the first point; hparams ``{"beta", "lmbda"}``."""
    name = "proker-imo" if corrected else "proker"
    sup = support_set(problem, corrected, options.proker_views, name)
    betas, lmbdas = grid_for(options)
    counts = grid_counts(problem, sup, betas, lmbdas, chunk_rows)
    ib, il = first_best(counts)
    hp = {"beta": float(betas[ib]), "lmbda": float(lmbdas[il])}
    test = classification_metrics(logits(problem, problem.test, sup, hp["beta"], hp["lmbda"], chunk_rows),
                                  problem.test.labels)
    return MethodResult(
        val_acc=percent(int(counts[ib, il]), problem.val.labels.shape[0]),
        test_acc=test["top1"],
        hparams=hp,
        test_top5=test["top5"],
        test_mean_per_class_recall=test["mean_per_class_recall"],
        meta={"views": sup.mode, "support_rows": int(sup.feats.shape[0]), "grid": options.proker_grid},
    )
