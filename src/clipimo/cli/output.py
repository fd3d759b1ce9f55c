"""Where a command's output goes: results on stdout or a ``--json`` file, progress bars on stderr."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def progress_setting(args: argparse.Namespace) -> bool | None:
    """True with --progress, False with --no-progress, else None: tqdm decides (bars on a terminal only)."""
    return getattr(args, "progress", None)


def write_json_output(target: str, obj: Any) -> None:
    """``--json OUT``: the file, written atomically, or with ``-`` stdout (the command's other output
    then goes to stderr, see :func:`clipimo.cli.app.main`)."""
    if target == "-":
        results_stream[0].write(json.dumps(obj, indent=2) + "\n")
        results_stream[0].flush()
    else:
        from ..utils.fileio import write_json

        write_json(target, obj)


results_stream = [sys.stdout]  # the real stdout of the command running (main sends its prints to stderr under --json -)
