"""clipimo: few-shot CLIP adaptation with intra-modal overlap correction (IMO).

Each subcommand lives in ``clipimo.commands.<name>`` and registers itself.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import ClipimoError

# Each module defines ``register(subparsers)`` which adds one (or a group of) subcommand(s)
# and sets ``func`` (called with the parsed args, returns an exit code).
COMMAND_MODULES = [
    "datasets",
    "demo",
    "evaluate",
    "features",
    "overlap",
    "report",
    "run",
    "shift",
    "train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipimo",
        description="Few-shot CLIP adaptation with intra-modal overlap correction (IMO): train the adapter once, "
        "then evaluate training-free methods with original and corrected image features.",
    )
    parser.add_argument("--version", action="version", version=f"clipimo {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"clipimo.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except (ClipimoError, OSError, ValueError) as err:
        if args.traceback:
            raise
        print(f"clipimo {args.command}: error: {describe(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)


INTERRUPTED = "interrupted; rerun the same command to resume"


def describe(err: Exception) -> str:
    """One line for an error: OS errors as '<reason>: <file>' (e.g. a full disk, a folder where a
    file was expected), others by their message."""
    if isinstance(err, OSError) and err.strerror:
        files = [f for f in (err.filename, err.filename2) if f]
        return f"{err.strerror}: {' -> '.join(map(str, files))}" if files else err.strerror
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
