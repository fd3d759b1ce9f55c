"""Tip-Adapter-F (Zhang et al., ECCV 2022) trained on the cached views (docs/methods.md, "Tip-Adapter-F").

The cache keys become a learnable ``[N, D]`` matrix theta (a copy: the keys themselves are never
changed), trained with cross-entropy on ``Z + a0 exp(-b0 (1 - f theta^T)) L`` at fixed (a0, b0).
Epoch t draws a seeded permutation of the support images and uses their stored augmentation pass
``t mod E`` (the official code re-encodes freshly augmented images each epoch). AdamW with the
official eps and PyTorch's default weight decay, cosine learning rate per iteration. After each
epoch the keys are scored on VAL at (a0, b0) and kept when strictly better (the official code
picks the epoch on test). The chosen keys then go through the project's Tip-Adapter grid search.
The IMO variant starts from the corrected keys and trains and scores the affinity on corrected
views and queries; the zero-shot term stays on original features.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch.nn import functional as F

from . import tip
from .common import MethodOptions, MethodResult, Problem, chunks, class_summer, zeroshot_logits
from .official import TIPF_DEFAULT, tipf_config

EPOCHS = TIPF_DEFAULT.epochs
LR = 1e-3
EPS = 1e-4
WEIGHT_DECAY = 0.01
INIT_ALPHA = TIPF_DEFAULT.init_alpha
INIT_BETA = 1.0


def adapter(problem: Problem, alpha: float = INIT_ALPHA, beta: float = INIT_BETA):
    """The function ``(z, affinity_feats, keys) -> z + alpha * exp(-beta (1 - affinity_feats
    keys^T)) L``, ``z`` the zero-shot logits of the same rows (L as a per-class sum whose layout is
    decided here, once)."""
    sums = class_summer(problem.cache_labels, problem.num_classes)

    def logits(z: torch.Tensor, affinity_feats: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # In place on the product's own buffer (autograd allows it: the product's backward needs its
        # inputs, exp's its output): (A - 1) * beta is -(beta (1 - A)) bit for bit.
        return z + alpha * sums((affinity_feats @ keys.T).sub_(1).mul_(beta).exp_())

    return logits


class ValScorer:
    """Val top-1 hits of trained keys at (alpha, beta0): the zero-shot term of every val chunk is
    computed once, since only the keys change between epochs."""

    def __init__(self, problem: Problem, corrected: bool, width: int, chunk_rows: int | None = None,
                 alpha: float = INIT_ALPHA):
        val = problem.val
        self.logits = adapter(problem, alpha)
        self.parts = [(val.query(corrected)[rows], zeroshot_logits(problem, val.feats[rows]), val.labels[rows])
                      for rows in chunks(val.labels.shape[0], width, chunk_rows)]

    def hits(self, keys: torch.Tensor) -> int:
        with torch.no_grad():
            return sum(int((self.logits(z, query, keys).argmax(1) == labels).sum())
                       for query, z, labels in self.parts)


def train_keys(problem: Problem, corrected: bool, seed: int = 1, batch: int = 256, epochs: int = EPOCHS,
               chunk_rows: int | None = None, init_alpha: float = INIT_ALPHA) -> tuple[torch.Tensor, int]:
    """The trained keys of the epoch with the most val hits (first on ties), and that epoch (1-based)."""
    name = "tip-f-imo" if corrected else "tip-f"
    views, affinity_views = problem.views(False, name), problem.views(corrected, name)
    n = views.shape[1]
    theta = torch.nn.Parameter(problem.keys(corrected).detach().clone())
    # The fused kernel: the same AdamW update in one pass over theta (3x faster on CPU; it may round
    # differently in the last bit).
    optimiser = torch.optim.AdamW([theta], lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY, fused=True)
    generator = torch.Generator().manual_seed(seed)
    total = epochs * math.ceil(n / batch)
    logits = adapter(problem, init_alpha)
    scorer = ValScorer(problem, corrected, n, chunk_rows, init_alpha)
    step = 0
    best, best_hits, best_epoch = theta.detach().clone(), 0, 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(views.device)
        view, affinity_view = views[epoch % len(views)], affinity_views[epoch % len(views)]
        for rows in order.split(batch):
            for group in optimiser.param_groups:
                group["lr"] = LR * (1 + math.cos(math.pi * step / total)) / 2
            out = logits(zeroshot_logits(problem, view[rows]), affinity_view[rows], theta)
            loss = F.cross_entropy(out, problem.cache_labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
        hits = scorer.hits(theta.detach())
        if hits > best_hits:
            best, best_hits, best_epoch = theta.detach().clone(), hits, epoch + 1
    return best, best_epoch


def trained_problem(problem: Problem, corrected: bool, options: MethodOptions | None = None,
                    epochs: int | None = None, chunk_rows: int | None = None) -> tuple[Problem, dict]:
    """``problem`` with the trained keys in the stream the method uses, and the training settings
    (chosen epoch, epochs, seed, batch, config, training alpha/beta). Deterministic given them on
    one device. ``epochs`` overrides the configuration's."""
    opts = options or MethodOptions()
    cfg = tipf_config(opts)
    epochs = epochs or cfg.epochs
    keys, epoch = train_keys(problem, corrected, opts.seed, opts.tipf_batch, epochs, chunk_rows, cfg.init_alpha)
    field = "cache_keys_corrected" if corrected else "cache_keys"
    meta = {"epoch": epoch, "epochs": epochs, "seed": opts.seed, "batch": opts.tipf_batch, "config": opts.tipf_config,
            "train_alpha": cfg.init_alpha, "train_beta": INIT_BETA}
    return dataclasses.replace(problem, **{field: keys}), meta


def run(problem: Problem, corrected: bool = False, options: MethodOptions | None = None,
        epochs: int | None = None, chunk_rows: int | None = None, **search) -> MethodResult:
    """Train, pick the epoch on val, then search (alpha, beta) with the trained keys as Tip-Adapter
    does; hparams ``{"alpha", "beta"}``, the epoch and training settings in ``meta``. ``search``
    goes to :func:`tip.run` (e.g. ``grid``), whose test pass on the trained keys also scores top-5
    and recall, so nobody trains again for them."""
    trained, meta = trained_problem(problem, corrected, options, epochs, chunk_rows)
    result = tip.run(trained, corrected=corrected, chunk_rows=chunk_rows, **search)
    return dataclasses.replace(result, meta=meta)
