"""Argument helpers shared by the commands: one definition of each flag that several commands take."""
from __future__ import annotations

import argparse
from typing import Any

from ..defaults import DEFAULT_DPI, FIGURE_FORMATS, PRECISIONS
from .config import add_list_argument, out_file, source_arg


def add_figure_args(p: Any) -> None:
    """``--format`` and ``--dpi`` for every command that writes figures (see clipimo.report.style)."""
    p.add_argument("--format", default="png", help=f"figure formats, comma-separated from {','.join(FIGURE_FORMATS)}")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="PNG resolution")


def add_device_arg(p: Any, where: str) -> None:
    """``--device``, read by :func:`clipimo.utils.device.resolve_device` in every command."""
    p.add_argument("--device", default="auto",
                   help=f"auto (CUDA when available, else CPU), cpu or cuda[:index]: {where}")


def add_precision_arg(p: Any, note: str) -> None:
    """``--precision`` of every command that runs a backbone."""
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help=f"fp32 (as the paper) or bf16 autocast (faster on GPUs); {note}")


def add_json_arg(p: Any, what: str) -> None:
    """``--json OUT`` of every command that writes JSON; ``-`` is stdout (see clipimo.cli.output.write_json_output)."""
    p.add_argument("--json", metavar="OUT", default=None, type=out_file("JSON", ".json"),
                   help=f"write {what} as JSON to OUT ('-': stdout, which then carries nothing else)")


def add_method_option_args(p: Any, tipf_order: str) -> None:
    """The settings of the methods beyond the paper (``clipimo.methods.common.MethodOptions``), the same in
    ``evaluate`` and ``run``; ``tipf_order`` says what orders Tip-F's minibatches there."""
    p.add_argument("--tipf-batch", type=int, default=256, help=f"tip-f: minibatch size ({tipf_order})")
    p.add_argument("--proker-views", choices=["auto", "all", "mean"], default="auto",
                   help="proker: every augmented view (all), the averaged keys (mean), or all while "
                        "E*N <= 32768 (auto)")
    p.add_argument("--proker-grid", choices=["default", "official"], default="default",
                   help="proker: clipimo's grid, or the official per-dataset grid (by the task's dataset name)")
    p.add_argument("--ape-config", choices=["default", "official"], default="default",
                   help="ape: clipimo's channels/weights/grid, or the official per-dataset config (by the "
                        "task's dataset name)")
    p.add_argument("--tipf-config", choices=["default", "official"], default="default",
                   help="tip-f: clipimo's training alpha and epochs, or the official per-dataset ones")
    p.add_argument("--clap-batch", type=int, default=256, help="zs-lp, clap: minibatch size (epochs of N // B "
                   "batches from the E x N pool of augmented views)")
    p.add_argument("--tda-config", default="default", metavar="default|official|FILE.yaml",
                   help="tda: clipimo's caches (positive alpha 2, beta 5), the official per-dataset config (by the "
                        "task's dataset name; chosen by its authors on test), or a YAML file in TDA's schema")


def parse_xlim(value: str | None) -> tuple[float, float] | None:
    """``--xlim LOW,HIGH`` (an overlap figure's fixed x-range) within [-1, 1], LOW < HIGH."""
    from ..errors import ClipimoError

    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ClipimoError(f"--xlim must be LOW,HIGH (two numbers), got {value!r}") from None
    if not -1.0 <= lo < hi <= 1.0:
        raise ClipimoError(f"--xlim must satisfy -1 <= LOW < HIGH <= 1 (cosine similarities), got {value!r}")
    return lo, hi


def add_dataset_arg(p: Any, help: str, required: bool = False) -> None:
    """``--dataset``, repeatable and comma-separated, in every command that takes datasets
    (``--datasets``, the older spelling, is accepted too)."""
    add_list_argument(p, "--dataset", item=source_arg, extend=True, required=required, metavar="NAME", help=help)
    add_list_argument(p, "--datasets", dest="dataset", item=source_arg, extend=True, help=argparse.SUPPRESS)
