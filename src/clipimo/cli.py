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
    "adapter",
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
    except (ClipimoError, FileNotFoundError, ValueError) as err:
        if args.traceback:
            raise
        print(f"clipimo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
