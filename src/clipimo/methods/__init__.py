"""Few-shot methods by name. Each entry maps a :class:`Problem` to a :class:`MethodResult`; those in
:data:`TAKES_OPTIONS` also accept ``options=MethodOptions(...)`` (call them through :func:`run_method`)."""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import ClipimoError
from . import ape, gda, proker, tip, tipf, tipx, zeroshot
from .common import MethodOptions, MethodResult, Problem

METHODS: dict[str, Callable[[Problem], MethodResult]] = {
    "zs": zeroshot.run,
    "tip": partial(tip.run, corrected=False),
    "tip-imo": partial(tip.run, corrected=True),
    "tipx": partial(tipx.run, corrected=False),
    "tipx-imo": partial(tipx.run, corrected=True),
    "gda": partial(gda.run, corrected=False),
    "gda-imo": partial(gda.run, corrected=True),
    "proker": partial(proker.run, corrected=False),
    "proker-imo": partial(proker.run, corrected=True),
    "ape": partial(ape.run, corrected=False),
    "ape-imo": partial(ape.run, corrected=True),
    "tip-f": partial(tipf.run, corrected=False),
    "tip-f-imo": partial(tipf.run, corrected=True),
}
# The methods :func:`cache.run_many` runs together: name -> (corrected, with_kl).
CACHE_VARIANTS = {"tip": (False, False), "tip-imo": (True, False), "tipx": (False, True), "tipx-imo": (True, True)}
# Methods whose results depend on MethodOptions (seed, batch, views mode, grid and config choice).
TAKES_OPTIONS = frozenset({"proker", "proker-imo", "ape", "ape-imo", "tip-f", "tip-f-imo"})


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


__all__ = ["CACHE_VARIANTS", "METHODS", "MethodOptions", "MethodResult", "Problem", "TAKES_OPTIONS",
           "parse_methods", "run_method"]
