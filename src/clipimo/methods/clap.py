"""ZS-LP and CLAP (Silva-Rodriguez et al., CVPR 2024): a cosine linear head initialised at the
zero-shot prototypes and trained on every augmented view of the support set.

The head ``P`` [C, D] starts at the raw text embeddings ``P0[c] = |t_c| W[:, c]`` (their norm sets
the effective step size, so the features file must carry ``text_norms``); logits are
``s * normalise(x) @ normalise(P)^T``. ZS-LP trains it with cross-entropy alone; CLAP adds the
penalty ``mean_c lam_c |P_c - P0_c|^2`` with fixed class multipliers ``lam_c``, the zero-shot
confidence in the true class averaged over that class's pool rows. Training follows the released
scripts: SGD (lr 0.1, momentum 0.9), 300 epochs, one warm-up epoch at 1e-5 then a cosine per
epoch; an "epoch" is ``N // B`` minibatches (one when ``N < B``) of a seeded shuffle of the
``E x N`` pool, and the model after the last epoch is reported (no validation is used).

The IMO variants learn on the corrected pool and score corrected queries; ``P0``, the penalty and
CLAP's multipliers (computed on the ORIGINAL pool) stay on the text / zero-shot side.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from ..errors import ClipimoError
from .common import MethodOptions, MethodResult, Problem, Split, chunks, count_hits, percent
from .metrics import classification_metrics

EPOCHS = 300
LR = 0.1
WARMUP_LR = 1e-5
MOMENTUM = 0.9


def learning_rate(epoch: int, epochs: int = EPOCHS) -> float:
    """The constant rate of ``epoch`` (0-based): warm-up epoch 0, then cosine over ``epochs``."""
    if epoch == 0:
        return WARMUP_LR
    return LR * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def head_logits(feats: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """``(x / |x|) @ (P / |P|)^T * s``: normalise both, multiply, then scale (the released order)."""
    x = feats / feats.norm(dim=-1, keepdim=True)
    p = prototypes / prototypes.norm(dim=-1, keepdim=True)
    return x @ p.T * scale


def initial_prototypes(problem: Problem, method: str) -> torch.Tensor:
    """``P0`` [C, D]: the project's text directions at the raw text embeddings' norms."""
    if problem.text_norms is None:
        raise ClipimoError(f"{method} starts from the raw text embeddings, but these features have no text_norms "
                           "[C] (the norm of each class's unnormalised text embedding); write a features file that "
                           "has it with `clipimo features --task DIR ...` or `clipimo run --save-features`")
    return (problem.text_weights * problem.text_norms[None, :]).T.contiguous()


def pool(problem: Problem, corrected: bool, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The view-major ``[E N, D]`` pool (row ``e N + i`` = pass e of image i) and its labels."""
    views = problem.views(corrected, method)
    return views.reshape(-1, views.shape[-1]), problem.cache_labels.repeat(views.shape[0])


def multipliers(feats: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """CLAP's ``lam_c``: mean zero-shot softmax of the true class over class c's rows (0 if none)."""
    num_classes = prototypes.shape[0]
    sums = torch.zeros(num_classes, dtype=feats.dtype, device=feats.device)
    for rows in chunks(feats.shape[0], num_classes):
        probs = torch.softmax(head_logits(feats[rows], prototypes, scale), -1)
        sums.index_add_(0, labels[rows], probs.gather(1, labels[rows, None]).squeeze(1))
    counts = torch.bincount(labels, minlength=num_classes)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def batches_per_epoch(n_images: int, batch: int) -> int:
    """Dassl's loader length over the N support images (``drop_last`` when ``N >= B``)."""
    return n_images // batch if n_images >= batch else 1


def train(problem: Problem, corrected: bool, constrained: bool, seed: int = 1, batch: int = 256,
          epochs: int = EPOCHS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prototypes after the last epoch, and CLAP's multipliers (None for ZS-LP)."""
    method = ("clap" if constrained else "zs-lp") + ("-imo" if corrected else "")
    p0 = initial_prototypes(problem, method)
    scale = problem.logit_scale
    feats, labels = pool(problem, corrected, method)
    lam = None
    if constrained:
        original, original_labels = pool(problem, False, method)
        lam = multipliers(original, original_labels, p0, scale)
    prototypes = p0.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([prototypes], lr=LR, momentum=MOMENTUM)
    generator = torch.Generator().manual_seed(seed)
    steps = batches_per_epoch(problem.cache_labels.shape[0], batch)
    for epoch in range(epochs):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(epoch, epochs)
        perm = torch.randperm(feats.shape[0], generator=generator).to(feats.device)
        for j in range(steps):
            rows = perm[j * batch:(j + 1) * batch]
            loss = F.cross_entropy(head_logits(feats[rows], prototypes, scale), labels[rows])
            if lam is not None:
                loss = loss + torch.mean(lam * (prototypes - p0).pow(2).sum(-1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return prototypes.detach(), lam


def logits(problem: Problem, split: Split, prototypes: torch.Tensor, corrected: bool,
           chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks of ``split`` under trained prototypes."""
    for rows in chunks(split.labels.shape[0], problem.num_classes, chunk_rows):
        yield rows, head_logits(split.query(corrected)[rows], prototypes, problem.logit_scale)


def run(problem: Problem, corrected: bool = False, constrained: bool = False,
        options: MethodOptions | None = None, epochs: int = EPOCHS) -> MethodResult:
    """Train ZS-LP (``constrained=False``) or CLAP and score the final head; hparams ``{}``,
    val top-1 computed and reported but never used."""
    opts = options or MethodOptions()
    prototypes, _ = train(problem, corrected, constrained, opts.seed, opts.clap_batch, epochs)
    val_hits = count_hits(logits(problem, problem.val, prototypes, corrected), problem.val.labels)
    test = classification_metrics(logits(problem, problem.test, prototypes, corrected), problem.test.labels)
    n = problem.cache_labels.shape[0]
    meta = {"epochs": epochs, "batch": opts.clap_batch, "batches_per_epoch": batches_per_epoch(n, opts.clap_batch),
            "pool": int(problem.views(corrected, "clap").shape[0]) * n, "seed": opts.seed}
    return MethodResult(val_acc=percent(val_hits, problem.val.labels.shape[0]), test_acc=test["top1"], hparams={},
                        meta=meta, test_top5=test["top5"], test_mean_per_class_recall=test["mean_per_class_recall"])
