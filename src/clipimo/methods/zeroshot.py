"""Zero-shot CLIP: ``Z = 100 f W`` on original features, nothing to search."""
from __future__ import annotations

from .common import MethodResult, Problem, Split, chunks, percent, zeroshot_logits


def _hits(problem: Problem, split: Split, chunk_rows: int | None) -> int:
    hits = 0
    for rows in chunks(split.labels.shape[0], problem.num_classes, chunk_rows):
        pred = zeroshot_logits(problem, split.feats[rows]).argmax(1)
        hits += int((pred == split.labels[rows]).sum())
    return hits


def run(problem: Problem, chunk_rows: int | None = None) -> MethodResult:
    """Accuracy on val and test; hparams ``{}``."""
    return MethodResult(
        val_acc=percent(_hits(problem, problem.val, chunk_rows), problem.val.labels.shape[0]),
        test_acc=percent(_hits(problem, problem.test, chunk_rows), problem.test.labels.shape[0]),
    )
