"""Mean and spread over seeds of per-cell results, and the IMO gain of each variant over its original.

The spread is the sample standard deviation (``ddof=1``): seeds are a sample of the few-shot
draws, and with the usual 3 seeds the population formula would understate it by a fifth. A single
seed has no spread; its ``std`` is 0.0 and every table and figure prints the count ``n`` so that
is never mistaken for agreement.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..methods.names import base_method, is_imo

STD_DDOF = 1
STD_LABEL = "sample std (ddof=1)"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of ``values``; std 0.0 for a single value."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=STD_DDOF)) if len(arr) > 1 else 0.0


def _aggregate(per: Mapping[tuple[str, int, str], Mapping[int, float]]) -> list[dict[str, Any]]:
    """Rows of mean and std over seeds per (dataset, shots, method), plus "average" rows (with
    several datasets): per seed the mean over the datasets, then mean/std over the seeds they share."""
    rows = []
    for (ds, k, m), by_seed in per.items():
        mean, std = mean_std(list(by_seed.values()))
        rows.append({"dataset": ds, "shots": k, "method": m, "mean": mean, "std": std, "n": len(by_seed)})
    datasets = list(dict.fromkeys(ds for ds, _, _ in per))
    for k, m in dict.fromkeys((k, m) for _, k, m in per):
        per_ds = [per.get((ds, k, m), {}) for ds in datasets]
        seeds = set.intersection(*(set(d) for d in per_ds)) if per_ds else set()
        if len(datasets) > 1 and seeds:
            mean, std = mean_std([float(np.mean([d[s] for d in per_ds])) for s in sorted(seeds)])
            rows.append({"dataset": "average", "shots": k, "method": m, "mean": mean, "std": std, "n": len(seeds)})
    return rows


def summarise(cells: Sequence[Mapping[str, Any]], key: str = "test_acc") -> list[dict[str, Any]]:
    """Mean and std over seeds of ``key`` (a per-method result, default top-1 test accuracy) per
    dataset, shots and method, plus "average" rows: per seed the mean over the datasets that have
    it, then mean/std over seeds. Methods whose results lack ``key`` are left out."""
    acc: dict[tuple[str, int, str], dict[int, float]] = {}
    for cell in cells:
        for method, rec in cell["methods"].items():
            if rec.get(key) is not None:
                acc.setdefault((cell["dataset"], int(cell["shots"]), method), {})[int(cell["seed"])] = float(rec[key])
    return _aggregate(acc)


def imo_gains(cells: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Test-accuracy gain of each IMO variant over its original, per dataset, shots (and "average").

    Computed per seed from the cells (mean and std over seeds of the paired difference); where
    cells lack a pair, the difference of the summary means (std and n ``None``).
    """
    per: dict[tuple[str, int, str], dict[int, float]] = {}
    for cell in cells:
        methods = cell["methods"]
        for m, rec in methods.items():
            if is_imo(m) and base_method(m) in methods:
                gain = float(rec["test_acc"]) - float(methods[base_method(m)]["test_acc"])
                per.setdefault((cell["dataset"], int(cell["shots"]), base_method(m)), {})[int(cell["seed"])] = gain
    rows = _aggregate(per)
    have = {(r["dataset"], r["shots"], r["method"]) for r in rows}
    means = {(r["dataset"], int(r["shots"]), r["method"]): float(r["mean"]) for r in summary}
    for (ds, k, m), v in means.items():
        if is_imo(m) and (ds, k, base_method(m)) in means and (ds, k, base_method(m)) not in have:
            rows.append({"dataset": ds, "shots": k, "method": base_method(m),
                         "mean": v - means[(ds, k, base_method(m))], "std": None, "n": None})
    return rows


def correction_gains(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, shots, (method, correction)): test accuracy of the method's corrected-stream
    variant under that correction minus the method on original features, mean/std over seeds (and
    "average" rows over datasets). From the cells' ``corrections`` (``clipimo run --corrections``)."""
    per: dict[tuple[str, int, Any], dict[int, float]] = {}
    for cell in cells:
        originals = cell["methods"]
        for corr, rec in (cell.get("corrections") or {}).items():
            for m, r in rec["methods"].items():
                if base_method(m) in originals:
                    gain = float(r["test_acc"]) - float(originals[base_method(m)]["test_acc"])
                    per.setdefault((cell["dataset"], int(cell["shots"]), (base_method(m), corr)), {})[int(cell["seed"])] = gain
    return _aggregate(per)
