"""Training-free methods by name. Each entry maps a :class:`Problem` to a :class:`MethodResult`."""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import ClipimoError
from . import gda, tip, tipx, zeroshot
from .common import MethodResult, Problem

METHODS: dict[str, Callable[[Problem], MethodResult]] = {
    "zs": zeroshot.run,
    "tip": partial(tip.run, corrected=False),
    "tip-imo": partial(tip.run, corrected=True),
    "tipx": partial(tipx.run, corrected=False),
    "tipx-imo": partial(tipx.run, corrected=True),
    "gda": partial(gda.run, corrected=False),
    "gda-imo": partial(gda.run, corrected=True),
}


def parse_methods(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Method names from ``"zs,tip"`` or a list, checked and de-duplicated in order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in METHODS]
    if unknown or not names:
        raise ClipimoError(f"unknown or missing method(s) {unknown or spec!r}; "
                           f"choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


__all__ = ["METHODS", "MethodResult", "Problem", "parse_methods"]
