"""The method vocabulary: which methods exist, how a variant is named, the order tables show them in,
and the metric keys every result carries.

Torch-free on purpose: the report, the aggregation and the command line learn a method's name here
without loading any model code.
"""
from __future__ import annotations

from typing import Iterable

from ..errors import ClipimoError

IMO_SUFFIX = "-imo"
# Base methods in display order; every one but zero-shot also runs as "<name>-imo" on the corrected stream.
# TDA uses no support labels, so it sits with zero-shot.
BASE_METHODS = ("zs", "tda", "tip", "tipx", "gda", "proker", "ape", "tip-f", "lp++", "zs-lp", "clap")
# Methods that use neither support nor val: one result per (dataset, seed, correction), whatever the shots.
SHOTS_FREE = frozenset({"tda", "tda-imo"})
# Methods without support labels (CLIP_benchmark's zero-shot task).
ZERO_SHOT = frozenset({"zs", "tda", "tda-imo"})
METHOD_NAMES = tuple(n for b in BASE_METHODS for n in ((b,) if b == "zs" else (b, b + IMO_SUFFIX)))

# result key -> what the number is (all in percent, like ``test_acc``)
METRIC_KEYS = {
    "test_acc": "top-1 accuracy (%)",
    "test_top5": "top-5 accuracy (%)",
    "test_mean_per_class_recall": "mean per-class recall (%)",
}


def base_method(method: str) -> str:
    """``tip-imo`` -> ``tip``; a name without the suffix is its own base."""
    return method[: -len(IMO_SUFFIX)] if method.endswith(IMO_SUFFIX) else method


def is_imo(method: str) -> bool:
    """Whether ``method`` is a variant that reads the corrected stream."""
    return method.endswith(IMO_SUFFIX)


def order_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in canonical order, then unknown ones in first-seen order, variants after their base."""
    seen = list(dict.fromkeys(methods))
    known = [m for m in METHOD_NAMES if m in seen]
    rest = [m for m in seen if m not in METHOD_NAMES]
    bases = list(dict.fromkeys(base_method(m) for m in rest))
    rest_sorted = [m for b in bases for m in (b, b + IMO_SUFFIX) if m in rest]
    return known + rest_sorted


def require_adapter(methods: Iterable[str], has_adapter: bool) -> None:
    """The ``-imo`` methods read the adapter's corrected stream: without one, a single error (which
    the command line raises from its flags, before any model loads)."""
    imo = [m for m in methods if is_imo(m)]
    if imo and not has_adapter:
        raise ClipimoError(f"methods {', '.join(imo)} need an IMO adapter (--adapter FILE)")
