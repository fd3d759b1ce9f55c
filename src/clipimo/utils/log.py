"""Messages and warnings go to stderr through ``logging``; stdout carries only results.

The CLI calls :func:`configure` once per command (``-q``: warnings only, ``-v``: debug); library
users get Python's default handling of the ``clipimo`` logger.
"""
from __future__ import annotations

import logging
import sys

RANDOM_INIT_WARNING = (
    "RANDOM-INIT BACKBONE: no pretrained CLIP weights were loaded, so every number below is "
    "meaningless as a measure of the method (pass --pretrained TAG_OR_FILE for real results)."
)

logger = logging.getLogger("clipimo")
_state = {"banner_shown": False}


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each message, so a stream swapped after
    :func:`configure` (a test's capture, a redirected console) still receives the messages."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


def configure(verbosity: int = 0) -> None:
    """Send the ``clipimo`` logger to stderr at INFO (``verbosity`` < 0: WARNING, > 0: DEBUG),
    replacing a handler an earlier call installed, and re-arm the banner."""
    for handler in [h for h in logger.handlers if getattr(h, "clipimo_cli", False)]:
        logger.removeHandler(handler)
    handler = _Stderr()
    handler.clipimo_cli = True
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False
    _state["banner_shown"] = False


def warn_random_init() -> None:
    """The RANDOM-INIT banner, once per command however many steps would repeat it."""
    if not _state["banner_shown"]:
        _state["banner_shown"] = True
        logger.warning(RANDOM_INIT_WARNING)


def tqdm_disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress``: None leaves the choice to tqdm (bars on a terminal only)."""
    return None if progress is None else not progress
