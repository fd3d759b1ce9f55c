"""Evaluate training-free methods on a features file: the API behind ``clipimo evaluate`` (its JSON:
docs/files.md, "Results JSON")."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from tqdm import tqdm

from ..features.file import FeatureSet, load_features
from ..utils.device import full_float32, resolve_device
from ..utils.log import logger, tqdm_disable
from ..utils.markdown import md_table
from . import cache, cost, official
from .common import MethodOptions, MethodResult, Problem
from .registry import CACHE_VARIANTS, parse_methods, run_method


def run_methods(feats: FeatureSet | str | os.PathLike, methods: str | Sequence[str],
                device: str | torch.device = "cpu", progress: bool | None = False,
                options: MethodOptions | None = None) -> dict[str, MethodResult]:
    """Run ``methods`` (names or ``"zs,tip,..."``); ``options`` (:class:`MethodOptions`) set ProKeR's,
    APE's and Tip-F's settings. Top-1 on val picks each method's point; every method scores test
    top-1, top-5 and mean per-class recall at that point in its one test pass. Tip, Tip-X and their IMO variants run together
    (:func:`clipimo.methods.cache.run_many`: they share affinities, KL sums and the test pass)."""
    names = parse_methods(methods)
    options = options or MethodOptions()
    official.check_configs(options, names)  # an official configuration that does not exist: before any work
    if not isinstance(feats, FeatureSet):
        feats = load_features(feats)
    problem = Problem.from_features(feats, resolve_device(device))
    for line in cost.slow_cell_lines(names, cost.Sizes.of(problem), problem.val.labels.device.type,
                                     torch.get_num_threads(), options):
        logger.warning(line)
    results = {}
    with full_float32():
        shared = [n for n in names if n in CACHE_VARIANTS]
        if shared:
            ran = cache.run_many(problem, [CACHE_VARIANTS[n] for n in shared])
            results.update({n: ran[CACHE_VARIANTS[n]] for n in shared})
        for name in tqdm([n for n in names if n not in results], desc="methods", disable=tqdm_disable(progress)):
            results[name] = run_method(name, problem, options)
    return {name: results[name] for name in names}


def evaluate_features(feats: FeatureSet | str | os.PathLike, methods: str | Sequence[str],
                      device: str | torch.device = "cpu", progress: bool | None = False,
                      options: MethodOptions | None = None) -> dict[str, dict]:
    """Run ``methods`` (names or ``"zs,tip,..."``) and return the result mapping:
    ``{method: {"test_acc", "val_acc", "hparams", "test_top5", "test_mean_per_class_recall"}}``,
    accuracies in percent.

    ``hparams`` holds the method's searched values only: ``{}`` for zs, alpha/beta for tip and
    tip-f, alpha/beta/gamma for tipx and ape, alpha for gda, beta/lmbda for proker, epoch for
    lp++, ``{}`` for zs-lp, clap and tda. ``val_acc`` is None for tda (it selects nothing). The
    other settings that shaped a result (ProKeR's views mode, APE's channels, Tip-F's epoch and
    seed, TDA's caches) are in :func:`run_methods`' ``MethodResult.meta`` (see :func:`method_settings`).
    """
    return {k: r.as_dict() for k, r in run_methods(feats, methods, device, progress, options).items()}


def method_settings(results: dict[str, MethodResult]) -> dict[str, dict]:
    """``{method: meta}`` for the methods that report non-searched settings."""
    return {name: dict(r.meta) for name, r in results.items() if r.meta}


def results_table(results: dict[str, dict], markdown: bool = False, settings: dict[str, dict] | None = None) -> str:
    """A small method / val / test / hparams table, plain or Markdown; ``settings`` (from
    :func:`method_settings`) are listed after the hyper-parameters."""
    settings = settings or {}
    header = ("method", "val top-1", "test top-1", "test top-5", "test recall", "hparams")
    rows = [(name, _opt(r["val_acc"]), f"{r['test_acc']:.2f}", _opt(r.get("test_top5")),
             _opt(r.get("test_mean_per_class_recall")),
             ", ".join([f"{k}={v:.4g}" for k, v in r["hparams"].items()]
                       + [f"{k}={v}" for k, v in settings.get(name, {}).items()]) or "-")
            for name, r in results.items()]
    if markdown:
        return md_table(header, rows, align="lrrrrl")
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def _opt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
