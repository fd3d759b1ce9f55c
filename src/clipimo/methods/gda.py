"""GDA (Wang et al., ICLR 2024): Gaussian discriminant analysis on the support set, added to zero-shot.

Class means ``mu_c`` and one covariance shared by all classes, fitted (as the official code does)
on every augmented view of the support set: the ``E x N`` per-pass features ``cache_views``, not
their averaged keys. A features file without views is an error, never a silent fallback.
The precision is the paper's closed-form shrinkage estimate (its released code),
``D * pinv(S + tr(S) / (n - 1) * I)`` with ``S`` the scatter of the class-centred views, i.e.
the inverse of a covariance shrunk toward a scaled identity: well conditioned even with far fewer
supports than dimensions. Uniform prior. Linear classifier ``w_c = P mu_c``,
``b_c = log(1/C) - mu_c^T P mu_c / 2``; logits ``Z + alpha * (f w + b)`` with alpha searched on val
over :data:`GDA_ALPHAS` (the first best wins). The IMO variant uses corrected support and query
features for the GDA term; ``Z`` always uses original features.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..errors import ClipimoError
from .common import MethodResult, Problem, Split, chunks, percent, zeroshot_logits
from .metrics import classification_metrics
from .search import affine_logits, count_correct, first_best

# The official search values: 1e-4 ... 100.
GDA_ALPHAS = np.array([1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0])


def fit_gda(keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[D, C]`` and bias ``[C]`` (float32) from features ``[n, D]`` with ``labels`` ``[n]``,
    fitted in float64 for a stable inverse."""
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).squeeze(1).tolist()
        raise ClipimoError(f"GDA needs at least one support feature per class; class(es) "
                           f"{empty[:10]}{' ...' if len(empty) > 10 else ''} have none")
    x = keys.double()
    n, dim = x.shape
    means = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    means /= counts[:, None]
    centred = x - means[labels]
    scatter = centred.T @ centred
    shrink = scatter.trace() / max(n - 1, 1)
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    precision = dim * torch.linalg.pinv(scatter + shrink * eye, hermitian=True)
    weight = precision @ means.T
    bias = math.log(1.0 / num_classes) - 0.5 * (means.T * weight).sum(0)
    return weight.float(), bias.float()


def fit_on_views(problem: Problem, corrected: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_gda`` on all ``E x N`` cache views of one stream (each view keeps its image's label)."""
    views = problem.views(corrected, "gda-imo" if corrected else "gda")
    return fit_gda(views.reshape(-1, views.shape[-1]), problem.cache_labels.repeat(views.shape[0]),
                   problem.num_classes)


def _terms(problem: Problem, split: Split, corrected: bool, weight, bias, chunk_rows):
    width = max(problem.text_weights.shape)
    for rows in chunks(split.labels.shape[0], width, chunk_rows):
        gda_logits = split.query(corrected)[rows] @ weight + bias
        yield rows, zeroshot_logits(problem, split.feats[rows]), gda_logits


def logits(problem: Problem, split: Split, corrected: bool, alpha: float, fitted: tuple | None = None,
           chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, Z + alpha * GDA)`` chunks; ``fitted`` is ``fit_on_views``'s output when already at hand."""
    weight, bias = fitted or fit_on_views(problem, corrected)
    for rows, z, g in _terms(problem, split, corrected, weight, bias, chunk_rows):
        yield rows, affine_logits(z, g, alpha)


def run(problem: Problem, corrected: bool = False, alphas: np.ndarray = GDA_ALPHAS,
        chunk_rows: int | None = None) -> MethodResult:
    """Search alpha on val; hparams ``{"alpha"}``."""
    weight, bias = fit_on_views(problem, corrected)
    counts = torch.zeros(len(alphas), dtype=torch.long, device=weight.device)
    for rows, z, g in _terms(problem, problem.val, corrected, weight, bias, chunk_rows):
        counts += count_correct(z, g, problem.val.labels[rows], alphas)[:, 0]
    (best,) = first_best(counts)
    alpha = float(alphas[best])
    test = classification_metrics(logits(problem, problem.test, corrected, alpha, (weight, bias), chunk_rows),
                                  problem.test.labels)
    return MethodResult(val_acc=percent(int(counts[best]), problem.val.labels.shape[0]), test_acc=test["top1"],
                        hparams={"alpha": alpha}, test_top5=test["top5"],
                        test_mean_per_class_recall=test["mean_per_class_recall"])
