"""An exclusive lock on an output folder, so two runs never write (and mix) one folder's results.

The lock file holds the host and PID of its owner. A lock left by a process that no longer runs
on this host is taken over (with a message); a live owner, or one on another host, makes the
second process fail at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..errors import ClipimoError
from .log import logger

LOCK_NAME = ".clipimo.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.clipimo.lock`` for the duration of the block."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ClipimoError(f"output folder {folder} is a file; expected a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            pid, host = owner.get("pid"), owner.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning("%s: taking over a stale lock of process %s on %s (no longer running)", path, pid, host)
                path.unlink(missing_ok=True)
                continue
            who = f"process {pid} on {host}, since {owner.get('started', '?')}" if owner else "an unknown process"
            raise ClipimoError(
                f"{folder} is in use by another clipimo run ({who}); wait for it to finish or use another "
                f"--out folder (if that process is gone, delete {path})"
            ) from None
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
        except OSError as err:  # e.g. a full disk: leave no half-written lock that would block every rerun
            path.unlink(missing_ok=True)
            raise ClipimoError(f"cannot write the lock file {path}: {err.strerror or err}") from err
        break
    else:
        raise ClipimoError(f"{path}: could not take the lock (another process keeps recreating it)")
    try:
        yield path
    finally:
        if _owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
