"""The Markdown report of a ``clipimo run``: tables, IMO gains, hyper-parameters, shift, plots.

``build_report(results, out_dir, overlaps)`` writes ``out_dir/report.md`` and ``out_dir/plots/*.png``
(accuracy vs shots per dataset and on average, and one overlap figure per overlap record). The
results follow the schema ``clipimo run`` writes (``meta``, ``cells``, ``summary``, optional
``shift``); see ``load_results``.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__, _io, plots
from .log import RANDOM_INIT_WARNING
from .errors import ClipimoError
from .plots import IMO_SUFFIX, base_method, is_imo, order_methods, slug
from .tables import cell_text, md_table

OVERLAP_FORMAT = "clipimo-overlap/1"

PLOTS_DIR = "plots"


# ---- overlap files -------------------------------------------------------------------------------

def overlap_file_record(src: dict[str, Any], figures: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """The overlap.json record: figures from ``diagnostics.compare_streams`` plus their provenance."""
    return {
        "format": OVERLAP_FORMAT,
        "source": src["source"],
        "backbone": src["backbone"],
        "adapter": src["adapter"],
        "random_init": src["random_init"],
        "n_items": int(len(src["labels"])),
        "n_classes": n_classes,
        "dim": int(np.asarray(src["original"]).shape[1]),
        **figures,
        "clipimo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_overlap(record: dict[str, Any], out: Path, title: str | None = None) -> None:
    """``out/overlap.json`` and its histogram picture ``out/overlap.png``."""
    _io.write_json(out / "overlap.json", record)
    plots.overlap_figure(record, out / "overlap.png", title=title)


# ---- loading -------------------------------------------------------------------------------------

def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ClipimoError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipimoError(f"{what} file {path} is not valid JSON: {err}") from err


def validate_results(results: Any, source: str = "results") -> dict[str, Any]:
    """Check the keys the report needs; fill ``summary`` from ``cells`` when it is absent."""
    if not isinstance(results, dict):
        raise ClipimoError(f"{source}: expected a JSON object with 'meta', 'cells' and 'summary'")
    for key in ("meta", "cells"):
        if key not in results:
            raise ClipimoError(f"{source}: missing key {key!r} (is this a results.json from 'clipimo run'?)")
    if not isinstance(results["cells"], list):
        raise ClipimoError(f"{source}: 'cells' must be a list")
    for i, cell in enumerate(results["cells"]):
        for key in ("dataset", "shots", "seed", "methods"):
            if key not in cell:
                raise ClipimoError(f"{source}: cells[{i}] lacks key {key!r}")
    summary = results.get("summary")
    if summary is None:
        summary = summarise(results["cells"])
    for i, row in enumerate(summary):
        for key in ("dataset", "shots", "method", "mean"):
            if key not in row:
                raise ClipimoError(f"{source}: summary[{i}] lacks key {key!r}")
    out = dict(results)
    out["summary"] = summary
    shift = results.get("shift")
    if shift is not None:
        if not isinstance(shift, dict) or not isinstance(shift.get("rows"), list):
            raise ClipimoError(f"{source}: 'shift' must be an object with a 'rows' list")
        for i, row in enumerate(shift["rows"]):
            for key in ("target", "method", "test_acc"):
                if key not in row:
                    raise ClipimoError(f"{source}: shift.rows[{i}] lacks key {key!r}")
    return out


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``results.json`` written by ``clipimo run``."""
    return validate_results(_read_json(path, "results"), str(path))


def load_shift(path: str | os.PathLike) -> dict[str, Any]:
    """A shift.json written by ``clipimo shift``."""
    record = _read_json(path, "shift")
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ClipimoError(f"shift file {path}: expected a 'rows' list (written by 'clipimo shift')")
    return record


def load_overlap(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an ``overlap.json`` written by ``clipimo overlap``."""
    record = _read_json(path, "overlap")
    if not isinstance(record, dict) or not record.get("original"):
        raise ClipimoError(f"overlap file {path}: missing key 'original' (is this an overlap.json from 'clipimo overlap'?)")
    for name in ("original", "corrected"):
        stats = record.get(name)
        if stats:
            for key in ("overlap", "bhattacharyya", "variance", "paired_density", "unpaired_density"):
                if key not in stats:
                    raise ClipimoError(f"overlap file {path}: {name!r} lacks key {key!r}")
    return record


# ---- aggregation ---------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0


def _aggregate(per: Mapping[tuple[str, int, str], Mapping[int, float]]) -> list[dict[str, Any]]:
    """Rows of mean and population std over seeds per (dataset, shots, method), plus "average" rows
    (with several datasets): per seed the mean over the datasets, then mean/std over the seeds they share."""
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


def summarise(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of test accuracy per dataset, shots and method, plus
    "average" rows: per seed the mean over the datasets that have it, then mean/std over seeds.

    Used only when a results file carries no ``summary`` of its own.
    """
    acc: dict[tuple[str, int, str], dict[int, float]] = {}
    for cell in cells:
        for method, rec in cell["methods"].items():
            acc.setdefault((cell["dataset"], int(cell["shots"]), method), {})[int(cell["seed"])] = float(rec["test_acc"])
    return _aggregate(acc)


def imo_gains(cells: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Test-accuracy gain of each IMO variant over its original, per dataset, shots (and "average").

    Computed per seed from the cells (mean and population std over seeds of the paired difference);
    where cells lack a pair, the difference of the summary means (std ``None``).
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


# ---- Markdown helpers ----------------------------------------------------------------------------

def _pm(mean: float | None, std: float | None, n: int | None = None, signed: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    if std is not None and (n is None or n > 1):
        text += f" ± {std:.2f}"
    return text


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4g}"


def _quote_warning(text: str) -> str:
    return f"> **⚠ {text}**"


def _dataset_order(results: Mapping[str, Any]) -> list[str]:
    meta_ds = list(results["meta"].get("datasets") or [])
    seen = [r["dataset"] for r in results["summary"] if r["dataset"] != "average"]
    seen += [c["dataset"] for c in results["cells"]]
    return list(dict.fromkeys(meta_ds + seen))


def _method_order(results: Mapping[str, Any]) -> list[str]:
    meta_m = list(results["meta"].get("methods") or [])
    seen = [r["method"] for r in results["summary"]]
    return list(dict.fromkeys(meta_m + order_methods(seen)))


# ---- sections ------------------------------------------------------------------------------------

def _header(results: Mapping[str, Any], results_path: str | None = None) -> list[str]:
    meta = results["meta"]
    backbone = meta.get("backbone") or {}
    random_init = bool(meta.get("random_init", backbone.get("random_init")))
    out = ["# clipimo report", ""]
    if random_init:
        out += [_quote_warning(RANDOM_INIT_WARNING), ""]
    if meta.get("tuned_on_test"):
        out += [_quote_warning(
            "HYPER-PARAMETERS WERE TUNED ON THE TEST SPLIT for at least one dataset: the test accuracies "
            "below are optimistic and not comparable with properly validated numbers."), ""]
    adapter = meta.get("adapter")
    if adapter:
        sha = adapter.get("sha256") or ""
        adapter_text = f"`{adapter.get('path', '?')}` (sha256 `{sha[:16]}{'…' if len(sha) > 16 else ''}`)"
    else:
        adapter_text = "none (IMO variants cannot differ from their originals without an adapter)"
    extra = {k: v for k, v in backbone.items() if k not in ("model", "weights", "random_init")}
    out += ["## Setup", ""]
    out += [f"- **Backbone:** model `{backbone.get('model', '?')}`, weights `{backbone.get('weights', '?')}`"
            + (" — **random init**" if random_init else "")]
    if extra:
        out += ["  - " + ", ".join(f"{k}: `{cell_text(v)}`" for k, v in extra.items())]
    out += [f"- **Adapter:** {adapter_text}"]
    out += [f"- **Validation protocol:** `{meta.get('validation', '?')}`"
            + (" — **tuned on test**" if meta.get("tuned_on_test") else "")]
    for key, label in (("methods", "Methods"), ("datasets", "Datasets"), ("shots", "Shots"), ("seeds", "Seeds")):
        if meta.get(key) is not None:
            out += [f"- **{label}:** " + ", ".join(str(v) for v in meta[key])]
    out += [f"- **clipimo:** {meta.get('clipimo_version', '?')}, results created {meta.get('created', '?')}"]
    if results_path:
        out += [f"- **Results file:** `{results_path}`"]
    out += [""]
    return out


def _validation_notes(results: Mapping[str, Any]) -> list[str]:
    """Per-dataset validation records that say they used the test split (beyond the global flag)."""
    flagged = {}
    for cell in results["cells"]:
        rec = cell.get("validation") or {}
        if isinstance(rec, dict) and (rec.get("tuned_on_test") or rec.get("split") == "test"):
            flagged.setdefault(cell["dataset"], set()).add(int(cell["shots"]))
    if not flagged:
        return []
    lines = [_quote_warning("Hyper-parameters chosen on the test split for: " + ", ".join(
        f"{ds} ({', '.join(str(k) for k in sorted(ks))} shots)" for ds, ks in flagged.items())), ""]
    return lines


def _accuracy_tables(results: Mapping[str, Any]) -> list[str]:
    summary = results["summary"]
    datasets = _dataset_order(results)
    methods = _method_order(results)
    index = {(r["dataset"], int(r["shots"]), r["method"]): r for r in summary}
    shots = sorted({int(r["shots"]) for r in summary})
    out = ["## Accuracy", "",
           "Top-1 test accuracy (%), mean ± std over seeds (std omitted for a single seed); best per row in bold.", ""]
    for k in shots:
        out += [f"### {k} shot{'s' if k != 1 else ''}", ""]
        rows = []
        for ds in datasets + ["average"]:
            recs = [index.get((ds, k, m)) for m in methods]
            if not any(recs):
                continue
            best = max((r["mean"] for r in recs if r), default=None)
            cells = []
            for r in recs:
                text = _pm(r["mean"], r.get("std"), r.get("n")) if r else "—"
                if r and best is not None and r["mean"] == best and len(methods) > 1:
                    text = f"**{text}**"
                cells.append(text)
            rows.append([("**average**" if ds == "average" else ds)] + cells)
        out += [md_table(["Dataset"] + methods, rows), ""]
    return out


def _gain_tables(results: Mapping[str, Any]) -> list[str]:
    gains = imo_gains(results["cells"], results["summary"])
    if not gains:
        return []
    datasets = _dataset_order(results)
    bases = [b for b in order_methods([base_method(m) for m in _method_order(results)]) if any(g["method"] == b for g in gains)]
    shots = sorted({int(g["shots"]) for g in gains})
    index = {(g["dataset"], int(g["shots"]), g["method"]): g for g in gains}
    out = ["## IMO gain", "",
           "Test accuracy of each IMO variant minus its original (percentage points), mean ± std over seeds "
           "of the per-seed difference.", ""]
    for b in bases:
        out += [f"### {b}{IMO_SUFFIX} − {b}", ""]
        rows = []
        for ds in datasets + ["average"]:
            recs = [index.get((ds, k, b)) for k in shots]
            if any(recs):
                rows.append([("**average**" if ds == "average" else ds)]
                            + [_pm(r["mean"], r["std"], r["n"], signed=True) if r else "—" for r in recs])
        out += [md_table(["Dataset"] + [f"{k} shot{'s' if k != 1 else ''}" for k in shots], rows), ""]
    return out


def _hparam_table(results: Mapping[str, Any]) -> list[str]:
    cells = results["cells"]
    datasets = _dataset_order(results)
    methods = _method_order(results)
    # (dataset, shots, method) -> seed -> hparams
    table: dict[tuple[str, int, str], dict[int, Mapping[str, float]]] = {}
    names: list[str] = []
    for cell in cells:
        for m, rec in cell["methods"].items():
            hp = rec.get("hparams") or {}
            if hp:
                table.setdefault((cell["dataset"], int(cell["shots"]), m), {})[int(cell["seed"])] = hp
                names += [n for n in hp if n not in names]
    if not table:
        return []
    out = ["## Chosen hyper-parameters", "",
           "Values picked on validation, one per seed in seed order (separated by ` / `; a single value "
           "when every seed picked the same).", ""]
    rows = []
    for ds in datasets:
        for k in sorted({key[1] for key in table if key[0] == ds}):
            for m in methods:
                by_seed = table.get((ds, k, m))
                if not by_seed:
                    continue
                seeds = sorted(by_seed)
                row = [ds, k, m]
                for name in names:
                    vals = [by_seed[s].get(name) for s in seeds]
                    if all(v is None for v in vals):
                        row.append("—")
                    elif len(set(vals)) == 1:  # the same value for every seed: show it once
                        row.append(_num(vals[0]))
                    else:
                        row.append(" / ".join("—" if v is None else _num(v) for v in vals))
                rows.append(row)
    seeds_all = sorted({int(c["seed"]) for c in cells})
    out += [md_table(["Dataset", "Shots", "Method"] + names, rows, ["l", "r", "l"] + ["r"] * len(names)), ""]
    out += [f"Seeds: {', '.join(str(s) for s in seeds_all)}.", ""]
    return out


def _shift_table(results: Mapping[str, Any]) -> list[str]:
    shift = results.get("shift")
    if not shift or not shift.get("rows"):
        return []
    rows = shift["rows"]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    methods = order_methods(r["method"] for r in rows)
    index = {(r["target"], r["method"]): float(r["test_acc"]) for r in rows}
    out = ["## Distribution shift", "",
           f"Cache and hyper-parameters from {shift.get('source', 'the source dataset')} "
           f"({shift.get('shots', '?')} shots) applied unchanged to each target; top-1 test accuracy (%).", ""]
    table = []
    for m in methods:
        vals = [index.get((t, m)) for t in targets]
        have = [v for v in vals if v is not None]
        avg = f"{np.mean(have):.2f}" if len(have) == len(targets) and have else "—"
        table.append([m] + [f"{v:.2f}" if v is not None else "—" for v in vals] + [avg])
    out += [md_table(["Method"] + targets + ["average"], table), ""]
    return out


def _plot_section(written: Mapping[str, Path], out_dir: Path, datasets: Sequence[str]) -> list[str]:
    if not written:
        return []
    out = ["## Accuracy vs shots", "",
           "Mean over seeds with error bars of one std; an IMO variant shares its original's colour (dashed).", ""]
    order = (["average"] if "average" in written else []) + [d for d in datasets if d in written and d != "average"]
    for name in order:
        rel = written[name].relative_to(out_dir).as_posix()
        label = "Average over datasets" if name == "average" else name
        out += [f"### {label}", "", f"![accuracy vs shots: {label}]({rel})", ""]
    return out


def _overlap_section(overlaps: Sequence[tuple[str, Mapping[str, Any]]], out_dir: Path) -> list[str]:
    if not overlaps:
        return []
    out = ["## Intra-modal overlap", "",
           "Overlap = area of the intersection of the paired (same class) and unpaired (different class) "
           "cosine-similarity densities; BC = Bhattacharyya coefficient; variance = mean per-dimension "
           "variance of the L2-normalised features. Lower overlap means better separated image-image "
           "similarities.", ""]
    used: set[str] = set()
    for i, (path, record) in enumerate(overlaps, 1):
        desc = (record.get("source") or {}).get("description") or Path(path).parent.name or Path(path).name
        stem = f"overlap_{i}_{slug(desc)[:40]}"
        while stem in used:
            stem += "_"
        used.add(stem)
        png = plots.overlap_figure(record, out_dir / PLOTS_DIR / f"{stem}.png")
        out += [f"### {desc}", "", f"From `{path}`.", ""]
        if record.get("random_init"):
            out += [_quote_warning(RANDOM_INIT_WARNING), ""]
        out += [overlap_table(record), "", f"![overlap: {desc}]({png.relative_to(out_dir).as_posix()})", ""]
    return out


def overlap_table(record: Mapping[str, Any]) -> str:
    """Markdown table of an overlap record: one row per stream, plus the change when both exist."""
    rows = []
    for name in ("original", "corrected"):
        s = record.get(name)
        if not s:
            continue
        n = s.get("n_pairs", {})
        mode = "exact" if s.get("mode") == "exact" else f"sampled {s.get('sample_size', 0):,} (seed {s.get('seed')})"
        rows.append([name, _fmt4(s.get("overlap")), _fmt4(s.get("bhattacharyya")), _fmtg(s.get("variance")),
                     f"{n.get('paired', 0):,}", f"{n.get('unpaired', 0):,}", mode])
    delta = record.get("delta")
    if delta:
        rows.append(["change", _fmt4(delta.get("overlap"), True), _fmt4(delta.get("bhattacharyya"), True),
                     _fmtg(delta.get("variance"), True), "", "", ""])
    return md_table(["Stream", "Overlap", "BC", "Variance", "Paired pairs", "Unpaired pairs", "Pairs"], rows,
                    ["l", "r", "r", "r", "r", "r", "l"])


def _fmt4(v: float | None, signed: bool = False) -> str:
    return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _fmtg(v: float | None, signed: bool = False) -> str:
    return "n/a" if v is None else (f"{v:+.4g}" if signed else f"{v:.4g}")


# ---- entry point ---------------------------------------------------------------------------------

def results_markdown(results: Mapping[str, Any]) -> str:
    """The text part of a report (setup, accuracy and IMO-gain tables, hyper-parameters), no plots."""
    results = validate_results(dict(results))
    lines = _header(results) + _validation_notes(results) + _accuracy_tables(results)
    lines += _gain_tables(results) + _shift_table(results) + _hparam_table(results)
    return "\n".join(lines) + "\n"


def build_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    overlaps: Sequence[tuple[str, Mapping[str, Any]]] = (),
    results_path: str | None = None,
) -> Path:
    """Write ``out_dir/report.md`` and its PNGs under ``out_dir/plots``; returns the report path.

    ``overlaps`` are ``(source path, overlap record)`` pairs, e.g. from ``load_overlap``.
    """
    results = validate_results(dict(results), results_path or "results")
    out_dir = Path(out_dir)
    meta = results["meta"]
    random_init = bool(meta.get("random_init", (meta.get("backbone") or {}).get("random_init")))
    datasets = _dataset_order(results)
    written = plots.accuracy_plots(results["summary"], out_dir / PLOTS_DIR, _method_order(results),
                                   random_init, datasets)
    lines = _header(results, results_path)
    lines += _validation_notes(results)
    lines += _accuracy_tables(results)
    lines += _gain_tables(results)
    lines += _plot_section(written, out_dir, datasets)
    lines += _shift_table(results)
    lines += _overlap_section(overlaps, out_dir)
    lines += _hparam_table(results)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines += ["---", "", f"Generated by `clipimo report` on {stamp}."]
    if random_init:
        lines += ["", _quote_warning(RANDOM_INIT_WARNING)]
    path = out_dir / "report.md"
    _io.write_text(path, "\n".join(lines) + "\n")
    return path
