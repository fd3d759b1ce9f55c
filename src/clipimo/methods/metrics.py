"""Classification metrics from logits: top-1, top-5 accuracy and mean per-class recall.

Ties follow the top-1 rule of the search (``argmax`` picks the lowest class index): a class ranks
above the true class when its logit is larger, or equal with a lower index. Top-k counts a hit
when fewer than ``k`` classes rank above the true one, so top-1 here equals the search's top-1.
Mean per-class recall averages, over the classes present in the labels, the fraction of each
class's queries predicted correctly (top-1); classes without queries are left out.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

TOP_K = 5


def _ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, how many classes rank above the true class (0 = a top-1 hit)."""
    true = logits.gather(1, labels[:, None])
    cols = torch.arange(logits.shape[1], device=logits.device)
    above = (logits > true) | ((logits == true) & (cols[None, :] < labels[:, None]))
    return above.sum(1)


def classification_metrics(logit_chunks: Iterable[tuple[slice, torch.Tensor]], labels: torch.Tensor,
                           classes: Sequence[int] | None = None, k: int = TOP_K) -> dict[str, float]:
    """``{"top1", "top5", "mean_per_class_recall"}`` in percent over ``(rows, logits)`` chunks.

    With ``classes`` the logits are restricted to those columns and ``labels`` index into
    ``classes`` (as in :func:`clipimo.methods.common.count_hits`). With fewer than ``k`` classes
    every query is a top-k hit.
    """
    cols = None if classes is None else torch.as_tensor(list(classes), device=labels.device)
    n = labels.shape[0]
    if n == 0:
        raise ValueError("no queries to score")
    top1 = torch.zeros((), dtype=torch.long, device=labels.device)
    topk = torch.zeros((), dtype=torch.long, device=labels.device)
    n_classes = 0
    class_hits = class_count = None
    for rows, logits in logit_chunks:
        if cols is not None:
            logits = logits[:, cols]
        if class_hits is None:
            n_classes = logits.shape[1]
            class_hits = torch.zeros(n_classes, dtype=torch.long, device=labels.device)
            class_count = torch.zeros(n_classes, dtype=torch.long, device=labels.device)
        y = labels[rows]
        rank = _ranks(logits, y)
        hit = rank == 0
        top1 += hit.sum()
        topk += (rank < k).sum()
        class_hits += torch.bincount(y[hit], minlength=n_classes)  # segment sums, no one-hot
        class_count += torch.bincount(y, minlength=n_classes)
    present = class_count > 0
    recall = (class_hits[present].double() / class_count[present].double()).mean()
    return {"top1": 100.0 * int(top1) / n, "top5": 100.0 * int(topk) / n,
            "mean_per_class_recall": 100.0 * float(recall)}
