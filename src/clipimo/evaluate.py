"""Evaluate training-free methods on a features file: the API behind ``clipimo evaluate`` (§8)."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from tqdm import tqdm

from .device import resolve_device
from .featurefile import FeatureSet, load_features
from .log import tqdm_disable
from .methods import METHODS, Problem, parse_methods
from .tables import md_table


def evaluate_features(feats: FeatureSet | str | os.PathLike, methods: str | Sequence[str],
                      device: str | torch.device = "cpu", progress: bool | None = False) -> dict[str, dict]:
    """Run ``methods`` (names or ``"zs,tip,..."``) and return the §8 result mapping:
    ``{method: {"test_acc": float, "val_acc": float, "hparams": {...}}}``, accuracies in percent.

    ``hparams`` holds the method's searched values only: ``{}`` for zs, alpha/beta for tip,
    alpha/beta/gamma for tipx, alpha for gda.
    """
    names = parse_methods(methods)
    if not isinstance(feats, FeatureSet):
        feats = load_features(feats)
    problem = Problem.from_features(feats, resolve_device(device))
    results = {}
    for name in tqdm(names, desc="methods", disable=tqdm_disable(progress)):
        results[name] = METHODS[name](problem).as_dict()
    return results


def format_table(results: dict[str, dict], markdown: bool = False) -> str:
    """A small method / val / test / hparams table, plain or Markdown."""
    header = ("method", "val top-1", "test top-1", "hparams")
    rows = [(name, f"{r['val_acc']:.2f}", f"{r['test_acc']:.2f}",
             ", ".join(f"{k}={v:.4g}" for k, v in r["hparams"].items()) or "-")
            for name, r in results.items()]
    if markdown:
        return md_table(header, rows, align="lrrl")
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)
