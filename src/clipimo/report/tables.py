"""The Markdown tables of a run's results: setup, accuracy (mean ± std over seeds), other metrics,
IMO gains, overlap corrections, shift and hyper-parameters. ``results.md`` is these alone; the
report (:mod:`.builder`) interleaves them with figures."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..methods.names import IMO_SUFFIX, METRIC_KEYS, base_method, order_methods
from ..utils.log import RANDOM_INIT_WARNING
from ..utils.markdown import cell_text, md_table, quote_warning
from .aggregate import STD_LABEL, correction_gains, imo_gains, mean_std, summarise
from .records import shown_path, validate_results, weights_name

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


def dataset_order(results: Mapping[str, Any]) -> list[str]:
    meta_ds = list(results["meta"].get("datasets") or [])
    seen = [r["dataset"] for r in results["summary"] if r["dataset"] != "average"]
    seen += [c["dataset"] for c in results["cells"]]
    return list(dict.fromkeys(meta_ds + seen))


def method_order(results: Mapping[str, Any]) -> list[str]:
    meta_m = list(results["meta"].get("methods") or [])
    seen = [r["method"] for r in results["summary"]]
    return list(dict.fromkeys(meta_m + order_methods(seen)))


# ---- sections ------------------------------------------------------------------------------------

def report_header(results: Mapping[str, Any], results_path: str | None = None,
                  base: str | os.PathLike | None = None) -> list[str]:
    """Banners and the setup list; paths relative to ``base``, the folder the report is written to."""
    meta = results["meta"]
    backbone = meta.get("backbone") or {}
    random_init = bool(meta.get("random_init", backbone.get("random_init")))
    out = ["# clipimo report", ""]
    if random_init:
        out += [quote_warning(RANDOM_INIT_WARNING), ""]
    if meta.get("tuned_on_test"):
        out += [quote_warning(
            "HYPER-PARAMETERS WERE TUNED ON THE TEST SPLIT for at least one dataset: the test accuracies "
            "below are optimistic and not comparable with properly validated numbers."), ""]
    adapter = meta.get("adapter")
    if adapter:
        sha = adapter.get("sha256") or ""
        where = shown_path(adapter["path"], base) if adapter.get("path") else "?"
        adapter_text = f"`{where}` (sha256 `{sha[:16]}{'…' if len(sha) > 16 else ''}`)"
    else:
        adapter_text = "none (IMO variants cannot differ from their originals without an adapter)"
    extra = {k: v for k, v in backbone.items() if k not in ("model", "weights", "random_init")}
    out += ["## Setup", ""]
    weights, shown = str(backbone.get("weights", "?")), weights_name(meta)
    out += [f"- **Backbone:** model `{backbone.get('model', '?')}`, weights `{shown}`"
            + (f" (sha256 `{weights[len('sha256:'):][:16]}…`)" if weights.startswith("sha256:") else "")
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
        out += [f"- **Results file:** `{shown_path(results_path, base)}`"]
    out += [""]
    return out


def validation_notes(results: Mapping[str, Any]) -> list[str]:
    """Per-dataset validation records that say they used the test split (beyond the global flag)."""
    flagged = {}
    for cell in results["cells"]:
        rec = cell.get("validation") or {}
        if isinstance(rec, dict) and (rec.get("tuned_on_test") or rec.get("split") == "test"):
            flagged.setdefault(cell["dataset"], set()).add(int(cell["shots"]))
    if not flagged:
        return []
    lines = [quote_warning("Hyper-parameters chosen on the test split for: " + ", ".join(
        f"{ds} ({', '.join(str(k) for k in sorted(ks))} shots)" for ds, ks in flagged.items())), ""]
    return lines


def accuracy_tables(results: Mapping[str, Any]) -> list[str]:
    summary = results["summary"]
    datasets = dataset_order(results)
    methods = method_order(results)
    index = {(r["dataset"], int(r["shots"]), r["method"]): r for r in summary}
    shots = sorted({int(r["shots"]) for r in summary})
    short = {(c["dataset"], int(c["shots"])) for c in results["cells"]
             if (c.get("actual_shots") or {}).get("short_classes")}
    out = ["## Accuracy", "",
           f"Top-1 test accuracy (%), mean ± {STD_LABEL} over n = {_n_text(summary)} seeds (std omitted for a "
           "single seed); best per row in bold. Top-1 on validation chose every hyper-parameter.", ""]
    if short:
        out += [quote_warning("† fewer train images than k for some classes, so fewer shots than the column "
                               "says (see each cell's actual_shots in results.json)"), ""]
    if any(base_method(m) == "ape" for m in methods):
        out += ["APE runs on the features file's template text weights, not the paper's CuPL prompts "
                "(\"templates, no CuPL\"): not comparable with the APE paper's numbers.", ""]
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
            mark = " †" if (ds, k) in short or (ds == "average" and any(kk == k for _, kk in short)) else ""
            rows.append([("**average**" if ds == "average" else ds) + mark] + cells)
        out += [md_table(["Dataset"] + methods, rows), ""]
    return out


def _n_text(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = sorted({int(r["n"]) for r in rows if r.get("n")})
    return "?" if not counts else (str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")


def metric_tables(results: Mapping[str, Any]) -> list[str]:
    """Top-5 accuracy and mean per-class recall at the hyper-parameters top-1 chose (one table each)."""
    datasets, methods = dataset_order(results), method_order(results)
    out: list[str] = []
    for key in ("test_top5", "test_mean_per_class_recall"):
        rows = summarise(results["cells"], key)
        if not rows:
            continue
        index = {(r["dataset"], int(r["shots"]), r["method"]): r for r in rows}
        table = []
        for ds in datasets + ["average"]:
            for k in sorted({int(r["shots"]) for r in rows if r["dataset"] == ds}):
                recs = [index.get((ds, k, m)) for m in methods]
                table.append([("**average**" if ds == "average" else ds), k]
                             + [_pm(r["mean"], r.get("std"), r.get("n")) if r else "—" for r in recs])
        out += [f"## {METRIC_KEYS[key][0].upper() + METRIC_KEYS[key][1:]}", "",
                f"Test split, at the hyper-parameters chosen by validation top-1; mean ± {STD_LABEL} over "
                f"n = {_n_text(rows)} seeds.", "",
                md_table(["Dataset", "Shots"] + methods, table, ["l", "r"] + ["r"] * len(methods)), ""]
    return out


def gain_tables(results: Mapping[str, Any]) -> list[str]:
    gains = imo_gains(results["cells"], results["summary"])
    if not gains:
        return []
    datasets = dataset_order(results)
    bases = [b for b in order_methods([base_method(m) for m in method_order(results)]) if any(g["method"] == b for g in gains)]
    shots = sorted({int(g["shots"]) for g in gains})
    index = {(g["dataset"], int(g["shots"]), g["method"]): g for g in gains}
    out = ["## IMO gain", "",
           "Test accuracy of each IMO variant minus its original (percentage points), mean ± "
           f"{STD_LABEL} over n = {_n_text(gains)} seeds of the per-seed difference.", ""]
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


CORRECTION_NOTES = {
    "imo": "the IMO adapter",
    "isoclip": "IsoCLIP (Magistri et al., CVPR 2026), projector-SVD operator",
    "textpca": "projection on the top half of the ImageNet text PCA subspace (Herzog & Wang, CVPR 2026)",
    "imagepca": "OUR control, not from a paper: image PCA on the generic image set",
}


def correction_rows(results: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    gains = correction_gains(results["cells"])
    corrections = list(dict.fromkeys(g["method"][1] for g in gains))
    bases = order_methods(dict.fromkeys(g["method"][0] for g in gains))
    return gains, corrections, bases


def correction_section(results: Mapping[str, Any], written: Mapping[int, Path], out_dir: Path | None) -> list[str]:
    gains, corrections, bases = correction_rows(results)
    if not gains:
        return []
    settings = {c.get("name"): c for c in results["meta"].get("corrections") or []}
    out = ["## Overlap corrections", "",
           "Test accuracy of each method's corrected-stream variant minus the method on original features "
           "(percentage points), mean ± std over seeds of the per-seed difference; text terms always use the "
           "original features.", ""]
    for corr in corrections:
        extra = {k: v for k, v in settings.get(corr, {}).items()
                 if k not in ("name", "ours") and not k.endswith("sha256")}
        out += [f"- **{corr}:** {CORRECTION_NOTES.get(corr, corr)}"
                + (" (" + ", ".join(f"{k} {cell_text(v)}" for k, v in extra.items()) + ")" if extra else "")]
    out += [""]
    index = {(g["dataset"], int(g["shots"]), tuple(g["method"])): g for g in gains}
    for k in sorted({int(g["shots"]) for g in gains}):
        out += [f"### {k} shot{'s' if k != 1 else ''}", ""]
        rows = []
        for ds in dataset_order(results) + ["average"]:
            for b in bases:
                recs = [index.get((ds, k, (b, c))) for c in corrections]
                if any(recs):
                    rows.append([("**average**" if ds == "average" else ds), b]
                                + [_pm(r["mean"], r["std"], r["n"], signed=True) if r else "—" for r in recs])
        out += [md_table(["Dataset", "Method"] + corrections, rows, ["l", "l"] + ["r"] * len(corrections)), ""]
        if out_dir is not None and k in written:
            out += [f"![correction gains, {k} shots]({written[k].relative_to(out_dir).as_posix()})", ""]
    return out


def hparam_table(results: Mapping[str, Any]) -> list[str]:
    cells = results["cells"]
    datasets = dataset_order(results)
    methods = method_order(results)
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


def shift_table(results: Mapping[str, Any]) -> list[str]:
    """Methods x targets, mean ± std over seeds; the source (where the hyper-parameters were tuned)
    is its own column and stays out of the targets' average."""
    shift = results.get("shift")
    if not shift or not shift.get("rows"):
        return []
    rows = shift["rows"]
    source = shift.get("source")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    shifted = [t for t in targets if t != source]
    methods = order_methods(r["method"] for r in rows)
    index = {(r["target"], r["method"]): r for r in rows}
    seeds = sorted({r["seed"] for r in shift.get("per_seed", [])})
    out = ["## Distribution shift", "",
           f"Cache and hyper-parameters from {source or 'the source dataset'} ({shift.get('shots', '?')} shots) "
           f"applied unchanged to each target; top-1 test accuracy (%), mean ± {STD_LABEL} over "
           f"{f'n = {len(seeds)} seeds' if seeds else 'the seeds'}. The target average leaves the source out"
           + (" (its ± is over the seeds' averages)." if seeds else "."), ""]
    table = []
    for m in methods:
        cells = [index.get((t, m)) for t in targets]
        table.append([m] + [_pm(float(r["test_acc"]), r.get("std"), r.get("n")) if r else "—" for r in cells]
                     + [_target_average(shift, shifted, m, seeds)])
    header = [f"{t} (source)" if t == source else t for t in targets]
    out += [md_table(["Method"] + header + ["target average"], table), ""]
    return out


def _target_average(shift: Mapping[str, Any], shifted: Sequence[str], method: str, seeds: Sequence[int]) -> str:
    """Mean over the shifted targets (per seed first when the per-seed records are there)."""
    index = {(r["target"], r["method"]): float(r["test_acc"]) for r in shift["rows"]}
    if not shifted or any((t, method) not in index for t in shifted):
        return "—"
    per_seed = {(r["target"], r["method"], r["seed"]): float(r["test_acc"]) for r in shift.get("per_seed", [])}
    if seeds and all((t, method, s) in per_seed for t in shifted for s in seeds):
        means = [float(np.mean([per_seed[(t, method, s)] for t in shifted])) for s in seeds]
        mean, std = mean_std(means)
        return _pm(mean, std, len(means))
    return f"{np.mean([index[(t, method)] for t in shifted]):.2f}"


# ---- entry point ---------------------------------------------------------------------------------

def results_markdown(results: Mapping[str, Any], base: str | os.PathLike | None = None) -> str:
    """The text part of a report (setup, accuracy and IMO-gain tables, hyper-parameters), no plots;
    paths relative to ``base``, the folder it is written to."""
    results = validate_results(dict(results))
    lines = report_header(results, base=base) + validation_notes(results) + accuracy_tables(results) + metric_tables(results)
    lines += gain_tables(results) + correction_section(results, {}, None) + shift_table(results)
    lines += hparam_table(results)
    return "\n".join(lines) + "\n"
