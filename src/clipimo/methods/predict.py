"""Any method at fixed hyper-parameters: apply a method tuned on one task to other data (distribution shift)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from ..errors import ClipimoError
from . import ape, cache, clap, gda, lpp, proker, tipf, zeroshot
from .common import MethodOptions, Problem, Split, count_hits, percent


@dataclass(frozen=True)
class FixedPoint:
    """One tuned method, to apply to several query splits (shift's targets, new images): what it
    computes from the cache alone (Tip-F's trained keys, ProKeR's coefficients, APE's channels) is
    done once, when it is made (:func:`fixed_point`)."""

    logits: Callable[[Split], Iterator[tuple[slice, torch.Tensor]]]

    def accuracy(self, split: Split, classes: Sequence[int] | None = None) -> float:
        """Top-1 (%) on ``split``; with ``classes``, logits are restricted to those columns and
        ``split.labels`` index into ``classes`` (ImageNet-A/-R: 200 of the 1,000 classes)."""
        return percent(count_hits(self.logits(split), split.labels, classes), split.labels.shape[0])


# The hyper-parameters each base method reads (tipx's gamma defaults to 0): a classifier file must hold them.
HPARAMS = {"zs": (), "tip": ("alpha", "beta"), "tip-f": ("alpha", "beta"), "tipx": ("alpha", "beta"),
           "gda": ("alpha",), "proker": ("beta", "lmbda"), "ape": ("alpha", "beta", "gamma"),
           "lp++": ("epoch",), "zs-lp": (), "clap": (), "tda": ()}


def fixed_point(problem: Problem, method: str, hparams: dict[str, float], chunk_rows: int | None = None,
                options: MethodOptions = MethodOptions(), head: dict[str, torch.Tensor] | None = None) -> FixedPoint:
    """``method`` (e.g. "tipx-imo") at ``hparams`` with the cache of ``problem``.

    Tip-F's trained keys are not hyper-parameters: they are trained again (deterministic given
    ``options``' seed, batch and configuration), as its search did. So are the linear probes'
    heads (LP++, ZS-LP, CLAP) unless ``head`` gives them (a saved classifier's tensors:
    ``weight``/``bias``/``alpha`` or ``prototypes``). APE's channels follow ``options``'
    configuration. TDA has no fixed point: its logits depend on the stream it adapts on.
    """
    base, corrected = method.removesuffix("-imo"), method.endswith("-imo")
    if base == "tda":
        raise ClipimoError(f"{method} adapts to the test stream it classifies (its caches fill from those images), "
                           "so it has no fixed classifier to apply elsewhere")
    if base == "lp++":
        trained = lpp.LppHead(**head) if head else lpp.train(problem, corrected, options.seed)[0]
        return FixedPoint(lambda split: lpp.logits(problem, split, trained, corrected, chunk_rows))
    if base in ("zs-lp", "clap"):
        prototypes = head["prototypes"] if head else clap.train(problem, corrected, base == "clap", options.seed,
                                                                options.clap_batch)[0]
        return FixedPoint(lambda split: clap.logits(problem, split, prototypes, corrected, chunk_rows))
    if base == "tip-f":
        problem, _ = tipf.trained_problem(problem, corrected, options, chunk_rows=chunk_rows)
        base = "tip"
    if base == "proker":
        sup = proker.support_set(problem, corrected, options.proker_views, method)
        alpha = proker.fit(problem, sup, hparams["beta"], hparams["lmbda"])
        return FixedPoint(lambda split: proker.apply(problem, split, sup, hparams["beta"], alpha, chunk_rows))
    if base == "ape":
        cfg, feat_num = ape.settings(problem, options)
        ref = ape.refine(problem, corrected, feat_num, cfg.weights)
        return FixedPoint(lambda split: ape.logits(problem, split, ref, hparams["alpha"], hparams["beta"],
                                                   hparams["gamma"], chunk_rows))
    if base == "zs":
        return FixedPoint(lambda split: zeroshot.logits(problem, split, chunk_rows))
    if base in ("tip", "tipx"):
        return FixedPoint(lambda split: cache.logits(problem, split, corrected, base == "tipx", hparams["alpha"],
                                                     hparams["beta"], hparams.get("gamma", 0.0), chunk_rows))
    if base == "gda":
        return FixedPoint(lambda split: gda.logits(problem, split, corrected, hparams["alpha"], chunk_rows=chunk_rows))
    raise ValueError(f"unknown method {method!r}")


def logits_at(problem: Problem, split: Split, method: str, hparams: dict[str, float],
              chunk_rows: int | None = None, options: MethodOptions = MethodOptions(),
              head: dict[str, torch.Tensor] | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, logits)`` chunks of ``method`` on ``split`` (:func:`fixed_point`)."""
    return fixed_point(problem, method, hparams, chunk_rows, options, head).logits(split)


def accuracy_at(problem: Problem, split: Split, method: str, hparams: dict[str, float],
                classes: Sequence[int] | None = None, chunk_rows: int | None = None,
                options: MethodOptions = MethodOptions()) -> float:
    """Top-1 (%) of ``method`` on ``split`` (:meth:`FixedPoint.accuracy`)."""
    return fixed_point(problem, method, hparams, chunk_rows, options).accuracy(split, classes)
