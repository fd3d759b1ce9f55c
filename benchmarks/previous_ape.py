"""APE's previous validation search (before issue 23), kept for ``bench_ape.py``'s comparison only.

Per beta: the slotted gather of ``exp(-beta (1 - A))`` (a fresh allocation each time) and one
:func:`clipimo.search.count_correct` call per gamma, each recomputing what depends on ``Z`` only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from clipimo.methods import ape
from clipimo.methods.common import Problem, chunks, class_slots, zeroshot_logits
from clipimo.methods.search import EVAL_BUDGET, count_correct


def val_counts(problem: Problem, corrected: bool, feat_num: int, betas, alphas, gammas) -> torch.Tensor:
    """int64 ``[betas, alphas, gammas]`` validation hits, computed as before."""
    crit = ape.channel_criterion(problem.text_weights, problem.cache_keys, problem.cache_labels)
    idx = crit.topk(feat_num).indices
    text = F.normalize(problem.text_weights[idx], dim=0)
    keys = F.normalize(problem.cache_keys[:, idx], dim=1)
    p = torch.softmax(keys @ text, dim=1)
    div = torch.log2((1 + 1e-6) / (p.gather(1, problem.cache_labels[:, None]).squeeze(1) + 1e-6))
    aff_keys = F.normalize(problem.keys(corrected)[:, idx], dim=1) if corrected else keys
    slots = class_slots(problem.cache_labels, problem.num_classes)
    w = torch.stack([torch.exp(float(g) * div) for g in gammas])
    weights = torch.cat([w, w.new_zeros(len(w), 1)], 1)[:, slots]
    counts = torch.zeros(len(betas), len(alphas), len(gammas), dtype=torch.long)
    val = problem.val
    for rows in chunks(val.labels.shape[0], aff_keys.shape[0]):
        query = F.normalize(val.query(corrected)[rows][:, idx], dim=1)
        z, distance, labels = zeroshot_logits(problem, val.feats[rows]), 1 - query @ aff_keys.T, val.labels[rows]
        for b, beta in enumerate(betas):
            affinity = torch.exp(-float(beta) * distance)
            padded = torch.cat([affinity, affinity.new_zeros(affinity.shape[0], 1)], 1)[:, slots]
            terms = torch.einsum("rck,gck->grc", padded, weights)
            if terms.shape[0] * len(alphas) * z.numel() > EVAL_BUDGET:
                counts[b] += torch.cat([count_correct(z, e, labels, alphas) for e in terms], dim=1)
            else:
                a = torch.as_tensor(np.asarray(alphas), dtype=z.dtype)[None, :, None, None]
                counts[b] += ((z + a * terms[:, None]).argmax(-1) == labels).sum(-1).T
    return counts
