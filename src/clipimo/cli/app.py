"""clipimo: few-shot CLIP adaptation with intra-modal overlap correction (IMO).

Each subcommand lives in ``clipimo.cli.commands.<name>`` and registers itself. Command modules import
their library code inside their run functions, so building the parser (``--help``, ``--version``)
loads neither torch nor open_clip.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from ..errors import ClipimoError
from ..utils import log
from ..utils.threads import apply_thread_policy
from ..version import __version__
from . import config as cliconfig
from .output import results_stream
from .paths import check_paths

# Each module defines ``register(subparsers)`` which adds one (or a group of) subcommand(s)
# and sets ``func`` (called with the parsed args, returns an exit code).
COMMAND_MODULES = [
    "adapter",
    "datasets",
    "demo",
    "evaluate",
    "features",
    "overlap",
    "predict",
    "report",
    "results",
    "run",
    "shift",
    "train",
]


def add_output_args(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-q/-v/--progress, accepted before or after the command name (a flag after it wins)."""
    count_default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-q", "--quiet", action="count", default=count_default,
                        help="only warnings and errors on stderr")
    parser.add_argument("-v", "--verbose", action="count", default=count_default,
                        help="also debug messages on stderr")
    if "--progress" not in parser._option_string_actions:  # train has its own --progress/--no-progress
        parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help="progress bars on stderr (default: only when stderr is a terminal)")


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers that run a command (the root and groups such as ``train`` only dispatch)."""
    return [p for p in cliconfig.all_parsers(parser)
            if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipimo",
        description="Few-shot CLIP adaptation with intra-modal overlap correction (IMO): train the adapter once, "
        "then evaluate training-free methods with original and corrected image features. Every command "
        "reads its settings from --config FILE.yaml too, and --print-config shows them.",
    )
    parser.add_argument("--version", action="version", version=f"clipimo {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    add_output_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"clipimo.cli.commands.{name}").register(sub)
    for child in cliconfig.all_parsers(parser):
        child.formatter_class = cliconfig.HelpFormatter
    for leaf in _leaf_parsers(parser):
        add_output_args(leaf)
        cliconfig.add_config_args(leaf)
        leaf.set_defaults(command_parser=leaf)
        cliconfig.prepare(leaf)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_thread_policy()  # before any command loads torch (see clipimo.utils.threads)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    results_stream[0] = sys.stdout
    try:
        cliconfig.apply(args, parser, argv)
        log.configure(args.verbose - args.quiet)  # the config file may set them
        if args.print_config:
            return cliconfig.print_config(args)
        check_paths(args)
        if getattr(args, "json", None) == "-":  # stdout carries the JSON alone
            with contextlib.redirect_stdout(sys.stderr):
                return int(args.func(args) or 0)
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
