"""The unit every data source produces and every consumer (features, training) reads."""
from __future__ import annotations

from typing import NamedTuple


class LabelledImage(NamedTuple):
    """One image file and its integer class label (index into the source's class-name list)."""

    path: str
    label: int
