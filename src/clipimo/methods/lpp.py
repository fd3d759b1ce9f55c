"""LP++ (Huang et al., CVPR 2024): a linear probe on support features plus learnable per-class
multipliers of the text logits, with step sizes in closed form.

Logits ``(phi Wc^T + b) + alpha * (x W)``: the visual branch ``phi`` is the support / query image
feature, the text branch ``x W`` the unscaled zero-shot cosines of the ORIGINAL feature. Trained
full batch on the stored view 0 of the support set for 300 epochs of SGD with momentum at
``lr_w = 4 N / lambda_max(Phi^T Phi)``; alpha starts at 250 x the mean true-class cosine and takes a
plain gradient step of ``lr_alpha = N / (4 max_c sum_i T_ic^2)`` every 10th epoch. As in the released
code, the visual weights start at class SUMS, the bias at ``nn.Linear``'s draw for the seed, and
alpha's gradient is never zeroed (each step uses the sum of every gradient so far): these shape the
published numbers, so they are kept. The epoch is chosen on val (the last one with the most hits).

The IMO variant feeds corrected features to the visual branch everywhere (init, step size,
training rows, queries); the text branch, hence alpha's init and step size, stays original.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .common import MethodOptions, MethodResult, Problem, Split, chunks, percent
from .metrics import classification_metrics

EPOCHS = 300
MOMENTUM = 0.9
ALPHA_EVERY = 10     # alpha steps after epochs 10, 20, ...
ALPHA_SCALE = 250.0


@dataclass(frozen=True)
class LppHead:
    """The kept parameters: visual weights ``[C, D]``, bias ``[C]`` and text multipliers ``[1, C]``."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor

    def logits(self, visual: torch.Tensor, original: torch.Tensor, text_weights: torch.Tensor) -> torch.Tensor:
        return F.linear(visual, self.weight, self.bias) + self.alpha * (original @ text_weights)


@dataclass(frozen=True)
class LppInit:
    """Where training starts and its step sizes (float32 tensors; ``lr_w`` a Python float)."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    lr_w: float
    lr_alpha: torch.Tensor


def initial_bias(seed: int, num_classes: int, dim: int) -> torch.Tensor:
    """``torch.manual_seed(seed); nn.Linear(D, C).bias`` without touching the global generator."""
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(dim)
    torch.empty(num_classes, dim).uniform_(-bound, bound, generator=g)  # the weight's draw, overwritten
    return torch.empty(num_classes).uniform_(-bound, bound, generator=g)


def initialise(phi: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, seed: int) -> LppInit:
    """Class sums, the seeded bias, alpha0 and both step sizes from the training rows ``phi`` [N, D]
    and their text cosines ``text`` [N, C]."""
    n, dim = phi.shape
    num_classes = text.shape[1]
    weight = torch.zeros(num_classes, dim, dtype=phi.dtype, device=phi.device).index_add_(0, labels, phi)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    true_cos = text.gather(1, labels[:, None]).squeeze(1) / counts[labels]
    class_means = torch.zeros(num_classes, dtype=text.dtype, device=text.device).index_add_(0, labels, true_cos)
    alpha0 = ALPHA_SCALE * class_means[present].double().mean()
    alpha = (alpha0 * torch.ones(1, num_classes, device=phi.device)).float()
    lam = torch.linalg.eigvalsh((phi.T @ phi).double()).max()
    lr_w = float(4 * n / lam)
    lr_alpha = n / (4 * (text * text).sum(0).max())
    bias = initial_bias(seed, num_classes, dim).to(phi.device)
    return LppInit(weight, bias, alpha, lr_w, lr_alpha)


def _rows(problem: Problem, corrected: bool) -> tuple[torch.Tensor, torch.Tensor]:
    name = "lp++-imo" if corrected else "lp++"
    phi = problem.views(corrected, name)[0]
    text = problem.views(False, name)[0] @ problem.text_weights
    return phi, text


def _val_hits(head: LppHead, visual: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> int:
    hits = 0
    for rows in chunks(labels.shape[0], head.weight.shape[0]):
        out = F.linear(visual[rows], head.weight, head.bias) + head.alpha * text[rows]
        hits += int((out.argmax(1) == labels[rows]).sum())
    return hits


def train(problem: Problem, corrected: bool, seed: int = 1, epochs: int = EPOCHS) -> tuple[LppHead, int, int, LppInit]:
    """The head of the last epoch with the most val hits, that epoch (0-based), its hits and the init."""
    phi, text = _rows(problem, corrected)
    labels = problem.cache_labels
    init = initialise(phi, text, labels, seed)
    weight = init.weight.clone().requires_grad_(True)
    bias = init.bias.clone().requires_grad_(True)
    alpha = init.alpha.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([weight, bias], lr=init.lr_w, momentum=MOMENTUM)
    val = problem.val
    val_visual, val_text = val.query(corrected), val.feats @ problem.text_weights
    best, best_epoch, kept = -1, 0, None
    for epoch in range(epochs):
        loss = F.cross_entropy(F.linear(phi, weight, bias) + alpha * text, labels)
        optimiser.zero_grad()
        loss.backward()                       # alpha.grad is never zeroed: it accumulates
        optimiser.step()
        with torch.no_grad():
            if (epoch + 1) % ALPHA_EVERY == 0:
                alpha -= init.lr_alpha * alpha.grad
            head = LppHead(weight.detach(), bias.detach(), alpha.detach())
            hits = _val_hits(head, val_visual, val_text, val.labels)
            if hits >= best:
                best, best_epoch = hits, epoch
                kept = LppHead(weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())
    return kept, best_epoch, best, init


def logits(problem: Problem, split: Split, head: LppHead, corrected: bool,
           chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks of ``split`` under a trained head."""
    for rows in chunks(split.labels.shape[0], problem.num_classes, chunk_rows):
        yield rows, head.logits(split.query(corrected)[rows], split.feats[rows], problem.text_weights)


def run(problem: Problem, corrected: bool = False, options: MethodOptions | None = None,
        epochs: int = EPOCHS) -> MethodResult:
    """Train, keep the epoch with the most val hits (last on ties), score test once; hparams
    ``{"epoch"}`` (1-based); alpha0, the step sizes and the training settings in ``meta``."""
    opts = options or MethodOptions()
    head, epoch, hits, init = train(problem, corrected, opts.seed, epochs)
    test = classification_metrics(logits(problem, problem.test, head, corrected), problem.test.labels)
    meta = {"support": "view 0", "epochs": epochs, "alpha0": float(init.alpha[0, 0]), "lr_w": init.lr_w,
            "lr_alpha": float(init.lr_alpha), "seed": opts.seed}
    return MethodResult(val_acc=percent(hits, problem.val.labels.shape[0]), test_acc=test["top1"],
                        hparams={"epoch": epoch + 1}, meta=meta, test_top5=test["top5"],
                        test_mean_per_class_recall=test["mean_per_class_recall"])
