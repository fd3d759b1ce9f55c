"""Defaults and value parsing that the command line needs before any heavy module is imported."""
from __future__ import annotations

from typing import Any, Callable

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_METHODS = ("zs", "tip", "tip-imo", "tipx", "tipx-imo")
# Every method ``clipimo.methods.METHODS`` implements, in its order (a test keeps them equal).
METHOD_NAMES = ("zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo")
DEFAULT_BINS = 200  # similarity histogram bins over [-1, 1] (clipimo.diagnostics)


def as_list(value: Any, cast: Callable = str) -> list:
    """'1,2,4' or [1, 2, 4] -> [1, 2, 4]."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [cast(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]
