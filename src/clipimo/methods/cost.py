"""A rough cost model of each method from a task's sizes, so a slow cell is announced before it runs.

Each method's work is counted as matrix-product flops and elementwise operations (exponentials,
comparisons, the search's passes) from the sizes that drive it: classes, keys, val and test
queries, feature width, augmented views and the grid (betas, alphas, gammas, lmbdas, epochs).
Dividing by a device's sustained rates gives seconds. The rates were measured on this project's
benchmarks (2 CPU cores; an H100-class GPU), so the estimate is good to a factor of a few, which
is all a "this will take minutes" line needs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .common import MethodOptions, Problem
from .names import base_method
from .official import ape_config, tipf_config

# A cell method estimated above this many seconds is announced.
SLOW_SECONDS = 180.0
# Sustained (float32 matmul flop/s, elementwise op/s) per device kind; CPU per 2 threads, scaled by
# the thread count. The CPU rates are those of an idle 2-core machine: a 4096-square product runs at
# 1.35e11 flop/s in float32 and 8.1e10 in float64; the methods' smaller products and solves reach
# about half of the float32 rate. ProKeR's float64 work is large factorisations, solves and products
# that run near the float64 peak: a whole beta at n = 16,000 ran at 6.4e10 flop/s, so it is counted
# at the same rate.
RATES = {"cpu": (6.0e10, 1.0e9), "cuda": (2.0e13, 2.0e11)}
# ProKeR keeps every view in its kernel up to this many rows (its ``auto`` views mode).
PROKER_ALL_VIEWS = 32768
# An eigendecomposition costs about this many Cholesky factorisations of the same size (measured).
EIGH_CHOLESKYS = 30


@dataclass(frozen=True)
class Sizes:
    """What a method's cost depends on: classes, cache keys, val and test queries, feature width,
    augmented views per key (0 without)."""

    classes: int
    keys: int
    val: int
    test: int
    dim: int
    views: int = 0

    @classmethod
    def of(cls, problem: Problem) -> "Sizes":
        views = 0 if problem.cache_views is None else int(problem.cache_views.shape[0])
        return cls(problem.num_classes, int(problem.cache_keys.shape[0]), int(problem.val.labels.shape[0]),
                   int(problem.test.labels.shape[0]), int(problem.text_weights.shape[0]), views)


def work(method: str, s: Sizes, options: MethodOptions | None = None) -> tuple[float, float]:
    """(float32-equivalent matmul flops, elementwise operations) of one run of ``method``."""
    options = options or MethodOptions()
    base = base_method(method)
    queries = s.val + s.test
    affinity = 2.0 * queries * s.keys * s.dim
    if base == "zs":
        return 2.0 * queries * s.dim * s.classes, float(queries * s.classes)
    if base in ("tip", "tipx"):  # val: 20 betas of exp + class sums and the search's passes; test: one
        kl = 2.0 * queries * (s.classes + s.keys) * s.dim if base == "tipx" else 0.0
        return affinity + kl, 3.0 * (20 * s.val + s.test) * s.keys + 200.0 * s.val * s.classes
    if base == "gda":
        return 2.0 * queries * s.dim * s.classes + 2.0 * max(s.views, 1) * s.keys * s.dim ** 2, 10.0 * queries * s.classes
    if base == "ape":
        betas, alphas, gammas = ape_config(options).step
        product = 2.0 * s.val * s.keys * betas * gammas  # the per-class products of every beta
        # About 8 passes' worth per (beta, gamma) over [val, classes]: the exact counter's passes at
        # their measured speed (benchmarks/bench_ape.py).
        return affinity + product, 3.0 * s.val * s.keys * betas + 8.0 * s.val * s.classes * betas * gammas
    if base == "proker":
        from .proker import EIGH_MIN_LMBDAS, grid_for

        betas, lmbdas = (len(x) for x in grid_for(options))
        n = s.views * s.keys if 0 < s.views * s.keys <= PROKER_ALL_VIEWS else s.keys
        per_beta = 2.0 * (s.val + n) * n * s.dim
        if lmbdas >= EIGH_MIN_LMBDAS:
            per_beta += EIGH_CHOLESKYS * n ** 3 / 3 + 2.0 * s.val * n * n + lmbdas * 2.0 * s.val * n * s.classes
        else:
            per_beta += lmbdas * (n ** 3 / 3 + 2.0 * n * n * s.classes + 2.0 * s.val * n * s.classes)
        return betas * per_beta, betas * (s.val + n) * n * 1.0
    if base == "tip-f":
        epochs = tipf_config(options).epochs
        mm, el = work("tip", s, options)
        return mm + epochs * (6.0 * s.keys * s.keys * s.dim + 2.0 * s.val * s.keys * s.dim), el + epochs * 4.0 * (
            s.keys + s.val) * s.keys
    if base in ("lp++", "zs-lp", "clap"):  # 300 epochs over the keys: forward, backward, val pass; test once
        per_epoch = 6.0 * s.keys * s.dim * s.classes + 2.0 * s.val * s.dim * s.classes
        extra = 2.0 * max(s.views, 1) * s.keys * s.dim * s.classes if base == "clap" else 0.0
        return 300 * per_epoch + extra + 2.0 * s.test * s.dim * s.classes, 300 * 5.0 * (s.keys + s.val) * s.classes
    if base == "tda":  # one pass over the test stream against caches of at most 5 entries per class
        return 2.0 * s.test * s.dim * s.classes * 6, 10.0 * s.test * s.classes
    raise ValueError(f"no cost model for method {method!r}")


def seconds(method: str, s: Sizes, device: str = "cpu", threads: int = 2, options: MethodOptions | None = None) -> float:
    """Estimated seconds of ``method`` on a device kind (``cpu`` with ``threads``, or ``cuda``)."""
    mm_rate, el_rate = RATES["cuda" if device.startswith("cuda") else "cpu"]
    if not device.startswith("cuda"):
        mm_rate, el_rate = mm_rate * threads / 2, el_rate * threads / 2
    mm, el = work(method, s, options)
    return mm / mm_rate + el / el_rate


def slow_cell_lines(methods: list[str], s: Sizes, device: str = "cpu", threads: int = 2,
                    options: MethodOptions | None = None) -> list[str]:
    """One line per method estimated above :data:`SLOW_SECONDS`, naming it, the estimate and the
    sizes, and on CPU what ``--device cuda`` would take."""
    lines = []
    for method in methods:
        est = seconds(method, s, device, threads, options)
        if est <= SLOW_SECONDS:
            continue
        line = (f"{method}: estimated {_duration(est)} on {device} for this cell ({s.classes:,} classes, "
                f"{s.keys:,} keys, {s.val:,} val / {s.test:,} test queries)")
        if not device.startswith("cuda"):
            line += f"; about {_duration(seconds(method, s, 'cuda', options=options))} with --device cuda"
        lines.append(line)
    return lines


def _duration(sec: float) -> str:
    return f"{sec:.0f} s" if sec < 120 else f"{sec / 60:.0f} min" if sec < 7200 else f"{sec / 3600:.1f} h"
