"""Messages and warnings go to stderr through ``logging``; stdout carries only results.

The CLI calls :func:`configure` once per command (``-q``: warnings only, ``-v``: debug); library
users get Python's default handling of the ``clipimo`` logger.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time

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


def duration(seconds: float) -> str:
    """A wall time as people read it: ``4.2s``, ``3m05s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """One INFO line per finished unit of work (a cell, a target, a logging window of training
    steps) with its count, the time since the start and an ETA, so a log file shows progress where
    no bar is drawn (stderr redirected)."""

    def __init__(self, label: str, total: int, done: int = 0) -> None:
        self.label, self.total, self.start_done = label, total, done
        self.done = done
        self.start = time.perf_counter()

    def eta(self) -> str:
        """Time left at the mean pace of the units finished by this object so far."""
        ran = self.done - self.start_done
        if ran <= 0 or self.done >= self.total:
            return "0s" if self.done >= self.total else "?"
        return duration((time.perf_counter() - self.start) / ran * (self.total - self.done))

    def update(self, what: str, units: int = 1) -> None:
        """Count ``units`` more finished and log ``label done/total: what (elapsed, ETA)``."""
        self.done += units
        elapsed = duration(time.perf_counter() - self.start)
        logger.info(f"{self.label} {self.done}/{self.total}: {what} (elapsed {elapsed}, ETA {self.eta()})")


def around_bar(bar_shown: bool) -> contextlib.AbstractContextManager:
    """While a progress bar is drawn, the CLI's log lines are written through tqdm so they appear
    above the bar instead of breaking it (library users' handlers are left alone)."""
    if not bar_shown or not any(getattr(h, "clipimo_cli", False) for h in logger.handlers):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm([logger])
