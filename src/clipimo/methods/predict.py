"""Any method at fixed hyper-parameters: apply a method tuned on one task to other data (§7 shift)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from . import ape, cache, gda, proker, tipf, zeroshot
from .common import MethodOptions, Problem, Split, count_hits, percent


def logits_at(problem: Problem, split: Split, method: str, hparams: dict[str, float],
              chunk_rows: int | None = None,
              options: MethodOptions = MethodOptions()) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks of ``method`` (e.g. "tipx-imo") on ``split`` with the cache of ``problem``.

    Tip-F's trained keys are not hyper-parameters: they are trained again (deterministic given
    ``options``' seed, batch and configuration), as its search did. APE's channels follow
    ``options``' configuration.
    """
    base, corrected = method.removesuffix("-imo"), method.endswith("-imo")
    if base == "tip-f":
        problem, _ = tipf.trained_problem(problem, corrected, options, chunk_rows=chunk_rows)
        base = "tip"
    if base == "proker":
        sup = proker.support_set(problem, corrected, options.proker_views, method)
        return proker.logits(problem, split, sup, hparams["beta"], hparams["lmbda"], chunk_rows)
    if base == "ape":
        cfg, feat_num = ape.settings(problem, options)
        ref = ape.refine(problem, corrected, feat_num, cfg.weights)
        return ape.logits(problem, split, ref, hparams["alpha"], hparams["beta"], hparams["gamma"], chunk_rows)
    if base == "zs":
        return zeroshot.logits(problem, split, chunk_rows)
    if base in ("tip", "tipx"):
        return cache.logits(problem, split, corrected, base == "tipx", hparams["alpha"], hparams["beta"],
                            hparams.get("gamma", 0.0), chunk_rows)
    if base == "gda":
        return gda.logits(problem, split, corrected, hparams["alpha"], chunk_rows=chunk_rows)
    raise ValueError(f"unknown method {method!r}")


def accuracy_at(problem: Problem, split: Split, method: str, hparams: dict[str, float],
                classes: Sequence[int] | None = None, chunk_rows: int | None = None,
                options: MethodOptions = MethodOptions()) -> float:
    """Top-1 (%) on ``split``; with ``classes``, logits are restricted to those columns and
    ``split.labels`` index into ``classes`` (ImageNet-A/-R: 200 of the 1,000 classes)."""
    hits = count_hits(logits_at(problem, split, method, hparams, chunk_rows, options), split.labels, classes)
    return percent(hits, split.labels.shape[0])
