"""Zero-shot: ``Z = s f W + b`` on original features (CLIP: s = 100, b = 0), nothing to search."""
from __future__ import annotations

from typing import Iterator

import torch

from .common import MethodResult, Problem, Split, chunks, count_hits, percent, zeroshot_logits
from .metrics import classification_metrics


def logits(problem: Problem, split: Split, chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, Z)`` chunks of ``split``."""
    for rows in chunks(split.labels.shape[0], problem.num_classes, chunk_rows):
        yield rows, zeroshot_logits(problem, split.feats[rows])


def run(problem: Problem, chunk_rows: int | None = None) -> MethodResult:
    """Accuracy on val, top-1 / top-5 / mean per-class recall on test; hparams ``{}``."""
    val_hits = count_hits(logits(problem, problem.val, chunk_rows), problem.val.labels)
    test = classification_metrics(logits(problem, problem.test, chunk_rows), problem.test.labels)
    return MethodResult(val_acc=percent(val_hits, problem.val.labels.shape[0]), test_acc=test["top1"],
                        test_top5=test["top5"], test_mean_per_class_recall=test["mean_per_class_recall"])
