"""Few-shot methods by name. Each entry maps a :class:`Problem` to a :class:`MethodResult`; those in
:data:`TAKES_OPTIONS` also accept ``options=MethodOptions(...)`` (call them through :func:`run_method`)."""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import ClipimoError
from . import ape, clap, gda, lpp, proker, tda, tip, tipf, tipx, zeroshot
from .common import MethodOptions, MethodResult, Problem
from .names import METHOD_NAMES, base_method, is_imo

_RUNNERS: dict[str, Callable[..., MethodResult]] = {
    "tip": tip.run, "tipx": tipx.run, "gda": gda.run, "proker": proker.run, "ape": ape.run, "tip-f": tipf.run,
    "lp++": lpp.run, "zs-lp": partial(clap.run, constrained=False), "clap": partial(clap.run, constrained=True),
    "tda": tda.run,
}
# Every name of the vocabulary: zero-shot, and each base method on the original or the corrected stream.
METHODS: dict[str, Callable[[Problem], MethodResult]] = {
    name: zeroshot.run if name == "zs" else partial(_RUNNERS[base_method(name)], corrected=is_imo(name))
    for name in METHOD_NAMES
}
# The methods :func:`cache.run_many` runs together: name -> (corrected, with_kl).
CACHE_VARIANTS = {"tip": (False, False), "tip-imo": (True, False), "tipx": (False, True), "tipx-imo": (True, True)}
# Methods whose results depend on MethodOptions (seed, batch, views mode, grid and config choice).
TAKES_OPTIONS = frozenset(n for n in METHOD_NAMES
                          if base_method(n) in ("proker", "ape", "tip-f", "lp++", "zs-lp", "clap", "tda"))


def run_method(name: str, problem: Problem, options: MethodOptions | None = None) -> MethodResult:
    """Run one registered method, passing ``options`` to those that take them."""
    if name in TAKES_OPTIONS and options is not None:
        return METHODS[name](problem, options=options)
    return METHODS[name](problem)


def parse_methods(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Method names from ``"zs,tip"`` or a list, checked and de-duplicated in order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in METHODS]
    if unknown or not names:
        raise ClipimoError(f"unknown or missing method(s) {unknown or spec!r}; "
                           f"choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))

