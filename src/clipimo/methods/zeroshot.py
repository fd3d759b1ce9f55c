"""Zero-shot: ``Z = s f W + b`` on original features (CLIP: s = 100, b = 0), nothing to search."""
from __future__ import annotations

from typing import Iterator

import torch

from .common import MethodResult, Problem, Split, chunks, count_hits, percent, zeroshot_logits


def logits(problem: Problem, split: Split, chunk_rows: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, Z)`` chunks of ``split``."""
    for rows in chunks(split.labels.shape[0], problem.num_classes, chunk_rows):
        yield rows, zeroshot_logits(problem, split.feats[rows])


def _hits(problem: Problem, split: Split, chunk_rows: int | None) -> int:
    return count_hits(logits(problem, split, chunk_rows), split.labels)


def run(problem: Problem, chunk_rows: int | None = None) -> MethodResult:
    """Accuracy on val and test; hparams ``{}``."""
    return MethodResult(
        val_acc=percent(_hits(problem, problem.val, chunk_rows), problem.val.labels.shape[0]),
        test_acc=percent(_hits(problem, problem.test, chunk_rows), problem.test.labels.shape[0]),
    )
