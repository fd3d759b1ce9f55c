"""Results as tables other tools read: ``results.csv``, CLIP_benchmark-shaped JSON per cell, and a
merged CSV of several runs.

Every row names its backbone (``model``, ``pretrained``) and adapter, so rows of different runs
can be joined without losing what produced them. The CLIP_benchmark records use its field names
(``dataset``, ``model``, ``pretrained``, ``task``, ``metrics`` with ``acc1``, ``acc5``,
``mean_per_class_recall`` as fractions in [0, 1]); clipimo's own files keep percentages.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ClipimoError
from ..methods.names import ZERO_SHOT
from ..utils import fileio
from .records import read_results, weights_name

# result key -> CLIP_benchmark metric name
CLIP_BENCHMARK_METRICS = {"test_acc": "acc1", "test_top5": "acc5", "test_mean_per_class_recall": "mean_per_class_recall"}
CLIP_BENCHMARK_DIR = "clip_benchmark"
_HPARAM_FIRST = ("alpha", "beta", "gamma")
_METRIC_COLUMNS = ("val_acc", "test_acc", "test_top5", "test_mean_per_class_recall")


def provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``model``, ``pretrained`` (the weights by name: tag or file name), ``weights`` (their identity,
    a weights file by its sha256), ``adapter`` (path), ``adapter_sha256`` and ``random_init`` of a run."""
    backbone = meta.get("backbone") or {}
    adapter = meta.get("adapter") or {}
    return {
        "model": backbone.get("model", ""),
        "pretrained": weights_name(meta),
        "weights": backbone.get("weights", ""),
        "adapter": adapter.get("path", ""),
        "adapter_sha256": adapter.get("sha256", ""),
        "random_init": bool(meta.get("random_init", backbone.get("random_init"))),
    }


def _hparam_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
    seen = [h for res in results for c in res["cells"] for r in c["methods"].values() for h in r.get("hparams", {})]
    return [h for h in _HPARAM_FIRST if h in seen] + [h for h in dict.fromkeys(seen) if h not in _HPARAM_FIRST]


def _fmt(v: Any) -> Any:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)


def result_rows(results: Mapping[str, Any], hparams: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (dataset, shots, seed, method): metrics (%), chosen hyper-parameters, provenance."""
    prov = provenance(results["meta"])
    rows = []
    for c in results["cells"]:
        for m, r in c["methods"].items():
            row = {"dataset": c["dataset"], "shots": c["shots"], "seed": c["seed"], "method": m}
            row.update({k: _fmt(r.get(k)) for k in _METRIC_COLUMNS})
            row.update({h: r.get("hparams", {}).get(h, "") for h in hparams})
            row["validation"] = (c.get("validation") or {}).get("protocol", "")
            row["min_shots_per_class"] = (c.get("actual_shots") or {}).get("min", c["shots"])
            rows.append({**row, **prov})
    return rows


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def results_csv(results: Mapping[str, Any]) -> str:
    """``results.csv``: the rows of :func:`result_rows`, hyper-parameter columns found in the run."""
    rows = result_rows(results, _hparam_names([results]))
    return _csv(rows, list(rows[0]) if rows else ["dataset", "shots", "seed", "method"])


def clip_benchmark_records(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{file name: record}``, one CLIP_benchmark-shaped record per cell and method.

    ``task`` is ``zeroshot_classification`` for zero-shot CLIP and TDA (no support labels) and
    ``fewshot_classification`` otherwise; ``method``, ``shots``, ``seed``, ``adapter_sha256`` and ``random_init`` say which
    few-shot cell it is. Metrics missing from older results are omitted, never invented.
    """
    prov = provenance(results["meta"])
    out = {}
    for c in results["cells"]:
        for m, r in c["methods"].items():
            metrics = {name: r[key] / 100.0 for key, name in CLIP_BENCHMARK_METRICS.items() if r.get(key) is not None}
            name = f"{c['dataset']}_k{c['shots']}_s{c['seed']}_{m}.json"
            out[name] = {
                "dataset": c["dataset"], "model": prov["model"], "pretrained": prov["pretrained"],
                "task": "zeroshot_classification" if m in ZERO_SHOT else "fewshot_classification",
                "metrics": metrics, "method": m, "shots": c["shots"], "seed": c["seed"],
                "weights": prov["weights"], "adapter_sha256": prov["adapter_sha256"] or None,
                "random_init": prov["random_init"],
            }
    return out


def write_clip_benchmark(out: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write :func:`clip_benchmark_records` under ``out/clip_benchmark/``; returns that folder."""
    folder = Path(out) / CLIP_BENCHMARK_DIR
    for name, record in clip_benchmark_records(results).items():
        fileio.write_json(folder / name, record)
    return folder


def merge_runs(paths: Sequence[str | os.PathLike]) -> str:
    """One CSV of the per-cell rows of several runs (folders or results.json files), with a ``run``
    column naming each row's source; hyper-parameter columns are the union over the runs."""
    if not paths:
        raise ClipimoError("results merge: give at least one run folder")
    runs = [(str(p), read_results(p)) for p in paths]
    hparams = _hparam_names([r for _, r in runs])
    rows = [{"run": name, **row} for name, res in runs for row in result_rows(res, hparams)]
    if not rows:
        raise ClipimoError(f"results merge: the runs {', '.join(n for n, _ in runs)} hold no cells")
    return _csv(rows, list(rows[0]))
