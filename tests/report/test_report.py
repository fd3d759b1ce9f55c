"""``clipimo report``: Markdown tables, banners, IMO gains, shift table, and linked PNG plots."""
from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from conftest import assert_figure, assert_png

from clipimo.cli.app import build_parser
from clipimo.cli.config import apply
from clipimo.errors import ClipimoError
from clipimo.methods.names import base_method, is_imo, order_methods
from clipimo.overlap import stats as dg
from clipimo.report import figures
from clipimo.report import style as plots
from clipimo.report.aggregate import imo_gains, summarise
from clipimo.report.builder import build_report
from clipimo.report.records import read_results
from clipimo.utils import log
from clipimo.utils.log import RANDOM_INIT_WARNING

METHODS = ["zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
BASE_ACC = {"zs": 50.0, "tip": 55.0, "tipx": 56.0, "gda": 57.0}





def acc(ds_i: int, k: int, seed: int, method: str) -> float:
    """A deterministic accuracy: grows with shots, IMO adds 1.5 * ds_i + seed / 10 points."""
    base = BASE_ACC[base_method(method)] + 10 * ds_i
    if method != "zs":
        base += 3 * np.log2(k) + 0.5 * seed
    if is_imo(method):
        base += 1.5 * ds_i + seed / 10
    return float(base)


def make_results(datasets=("Caltech101", "EuroSAT"), shots=(1, 2, 4), seeds=(1, 2, 3), random_init=True,
                 tuned_on_test=False, shift=True, summary=True):
    cells = []
    for i, ds in enumerate(datasets):
        for k in shots:
            for s in seeds:
                methods = {}
                for m in METHODS:
                    hp = {} if m == "zs" else {"alpha": 1.0 + s, "beta": 5.263157894736842}
                    if m.startswith("tipx"):
                        hp["gamma"] = 0.6122448979591837 * s
                    methods[m] = {"test_acc": acc(i, k, s, m), "val_acc": acc(i, k, s, m) + 1, "hparams": hp,
                                  "test_top5": acc(i, k, s, m) + 20, "test_mean_per_class_recall": acc(i, k, s, m) - 2}
                cells.append({"dataset": ds, "shots": k, "seed": s,
                              "validation": {"protocol": "full", "split": "val"}, "methods": methods})
    results = {
        "meta": {
            "backbone": {"model": "clipimo-tiny-vit", "weights": "random-init(seed=0)", "random_init": random_init},
            "random_init": random_init,
            "adapter": {"path": "adapters/imo.safetensors", "sha256": "ab" * 32},
            "methods": METHODS, "datasets": list(datasets), "shots": list(shots), "seeds": list(seeds),
            "validation": "full", "tuned_on_test": tuned_on_test, "clipimo_version": "0.1.0",
            "created": "2025-01-01T00:00:00+00:00",
        },
        "cells": cells,
    }
    if summary:
        results["summary"] = summarise(cells)
    if shift:
        results["shift"] = {"source": "ImageNet", "shots": 16, "rows": [
            {"target": t, "method": m, "test_acc": 40.0 + j + (2.0 if is_imo(m) else 0.0)}
            for j, t in enumerate(["ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R"]) for m in METHODS]}
    return results


def image_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def table_row(text: str, first_cell: str, after: str) -> list[str]:
    """Cells of the first table row starting with ``first_cell`` after the heading ``after``."""
    start = text.index(after)
    for line in text[start:].splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} after {after!r}")


def cli(argv):
    """The command line as clipimo.cli.app parses it, with errors raised instead of printed."""
    log.configure()  # as clipimo.cli.app does: messages to this test's stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    apply(args, parser, argv)
    return args.func(args)


# ---- aggregation -------------------------------------------------------------------------------

def test_summarise_and_gains_match_hand_computation():
    res = make_results()
    rows = {(r["dataset"], r["shots"], r["method"]): r for r in res["summary"]}
    r = rows[("EuroSAT", 4, "tip-imo")]
    vals = [acc(1, 4, s, "tip-imo") for s in (1, 2, 3)]
    assert r["mean"] == pytest.approx(np.mean(vals)) and r["std"] == pytest.approx(0.6) and r["n"] == 3  # ddof=1 std of values 0.6 apart
    avg = rows[("average", 2, "tip")]
    per_seed = [np.mean([acc(0, 2, s, "tip"), acc(1, 2, s, "tip")]) for s in (1, 2, 3)]
    assert avg["mean"] == pytest.approx(np.mean(per_seed)) and avg["std"] == pytest.approx(np.sqrt(np.sum((np.array(per_seed) - np.mean(per_seed)) ** 2) / 2))
    gains = {(g["dataset"], g["shots"], g["method"]): g for g in imo_gains(res["cells"], res["summary"])}
    g = gains[("EuroSAT", 1, "tipx")]  # 1.5 + seed / 10 for seeds 1..3
    assert g["mean"] == pytest.approx(1.7) and g["std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert gains[("Caltech101", 1, "tip")]["mean"] == pytest.approx(0.2)
    assert gains[("average", 4, "gda")]["mean"] == pytest.approx((0.2 + 1.7) / 2)
    assert ("Caltech101", 1, "zs") not in gains


# ---- report ------------------------------------------------------------------------------------

def test_report_has_banner_tables_gains_hparams_shift_and_linked_pngs(tmp_path):
    res = make_results()
    path = build_report(res, tmp_path / "rep", results_path="results.json")
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# clipimo report"
    assert RANDOM_INIT_WARNING in "\n".join(lines[:4])  # banner at the top
    assert "clipimo-tiny-vit" in text and "random-init(seed=0)" in text and "adapters/imo.safetensors" in text
    assert "`full`" in text and "TUNED ON THE TEST SPLIT" not in text
    for k in (1, 2, 4):
        assert f"### {k} shot" in text
    assert "| Dataset | zs | tip | tip-imo | tipx | tipx-imo | gda | gda-imo |" in text
    # EuroSAT, 4 shots: tip mean over seeds 1..3 is 55 + 10 + 6 + 1 = 72.00, std 0.41.
    row = table_row(text, "EuroSAT", "### 4 shots")
    assert row[2] == f"{np.mean([acc(1, 4, s, 'tip') for s in (1, 2, 3)]):.2f} ± 0.50"
    assert row[7].startswith("**")  # gda-imo is the best method of the row
    assert table_row(text, "**average**", "### 4 shots")[1].startswith("55.00")
    # IMO gains per method, per shot count.
    assert "### tip-imo − tip" in text and "### tipx-imo − tipx" in text and "### gda-imo − gda" in text
    gain_row = table_row(text, "EuroSAT", "### tipx-imo − tipx")
    assert gain_row[1:] == ["+1.70 ± 0.10"] * 3
    # Hyper-parameters per dataset / shots / method, one value per seed.
    hp_row = next(line for line in lines if line.startswith("| Caltech101 | 2 | tipx |"))
    assert "2 / 3 / 4" in hp_row and "0.6122 / 1.224 / 1.837" in hp_row
    # Distribution shift.
    assert "## Distribution shift" in text and "ImageNet-Sketch" in text
    shift_row = table_row(text, "tip-imo", "## Distribution shift")
    assert shift_row[1:] == ["42.00", "43.00", "44.00", "45.00", "43.50"]
    # Every linked image exists and is a valid PNG; one per dataset plus the average.
    links = image_links(text)
    assert {"plots/acc_average.png", "plots/acc_caltech101.png", "plots/acc_eurosat.png"} <= set(links)
    for rel in links:
        assert_png(path.parent / rel, 300, 200)
    assert not list((tmp_path / "rep").rglob(".*.tmp*"))


def test_report_without_random_init_and_with_test_tuning_and_no_summary(tmp_path):
    res = make_results(datasets=("OxfordPets",), shots=(1, 16), seeds=(1,), random_init=False,
                       tuned_on_test=True, shift=False, summary=False)
    text = build_report(res, tmp_path).read_text()
    assert RANDOM_INIT_WARNING not in text and "RANDOM-INIT" not in text
    assert "TUNED ON THE TEST SPLIT" in text.splitlines()[2]
    assert "Distribution shift" not in text
    row = table_row(text, "OxfordPets", "### 16 shots")
    assert row[1] == "50.00" and "±" not in row[2]  # a single seed: no std
    # One dataset: its accuracy and gain figures, no grid and no average.
    assert image_links(text) == ["plots/gain_oxfordpets.png", "plots/acc_oxfordpets.png"]
    assert_png(tmp_path / "plots" / "acc_oxfordpets.png", 300, 200)
    assert "over n = 1 seeds" in text and "RANDOM INIT" not in (tmp_path / "plots" / "acc_oxfordpets.png").read_bytes().decode("latin-1")


def test_shift_section_keeps_the_spread_and_leaves_the_source_out_of_the_average(tmp_path):
    res = make_results(shift=False)
    per_seed = [{"target": t, "seed": s, "method": "tip", "test_acc": base + 2 * s}
                for t, base in (("ImageNet", 70.0), ("ImageNetV2", 60.0), ("ImageNetA", 30.0)) for s in (1, 2, 3)]
    rows = []
    for t in ("ImageNet", "ImageNetV2", "ImageNetA"):
        accs = [r["test_acc"] for r in per_seed if r["target"] == t]
        rows.append({"target": t, "method": "tip", "test_acc": float(np.mean(accs)),
                     "std": float(np.std(accs, ddof=1)), "n": 3})
    res["shift"] = {"source": "ImageNet", "shots": 16, "seeds": [1, 2, 3], "rows": rows, "per_seed": per_seed}
    text = build_report(res, tmp_path / "rep").read_text()
    header = next(line for line in text[text.index("## Distribution shift"):].splitlines() if line.startswith("| Method"))
    assert header == "| Method | ImageNet (source) | ImageNetV2 | ImageNetA | target average |"
    # per seed s the target mean is (60 + 2s + 30 + 2s) / 2 = 45 + 2s: 47, 49, 51 -> 49.00 ± 2.00
    assert table_row(text, "tip", "## Distribution shift")[1:] == ["74.00 ± 2.00", "64.00 ± 2.00", "34.00 ± 2.00",
                                                                   "49.00 ± 2.00"]


def test_report_refuses_a_shift_of_another_model_and_reads_run_folders(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    res = make_results(shift=False)
    (run / "results.json").write_text(json.dumps(res))
    shift = {"source": "ImageNet", "shots": 16, "backbone": res["meta"]["backbone"], "adapter": res["meta"]["adapter"],
             "rows": [{"target": "ImageNetV2", "method": "tip", "test_acc": 60.0, "std": 1.0, "n": 2}]}
    (tmp_path / "sh").mkdir()
    (tmp_path / "sh" / "shift.json").write_text(json.dumps(shift))
    assert cli(["report", "--results", str(run), "--shift", str(tmp_path / "sh"), "--out", str(tmp_path / "r")]) == 0
    assert "| tip | 60.00 ± 1.00 | 60.00 |" in (tmp_path / "r" / "report.md").read_text()
    capsys.readouterr()
    other = {**shift, "adapter": {"path": "b.safetensors", "sha256": "cd" * 32},
             "backbone": {**shift["backbone"], "weights": "tag:openai"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ClipimoError, match=r"differ in: weights, adapter\); give the shift result of the same model"):
        cli(["report", "--results", str(run), "--shift", str(tmp_path / "other.json"), "--out", str(tmp_path / "r2")])
    assert not (tmp_path / "r2").exists()


def test_results_validation_errors(tmp_path):
    with pytest.raises(ClipimoError, match="does not exist"):
        read_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClipimoError, match="not valid JSON"):
        read_results(tmp_path / "bad.json")
    res = make_results()
    del res["cells"]
    (tmp_path / "nocells.json").write_text(json.dumps(res))
    with pytest.raises(ClipimoError, match="'cells'"):
        read_results(tmp_path / "nocells.json")
    res = make_results()
    del res["shift"]["rows"][0]["test_acc"]
    with pytest.raises(ClipimoError, match=r"shift\.rows\[0\].*test_acc"):
        build_report(res, tmp_path / "r")


def test_cli_report_with_overlap_figures(tmp_path, capsys):
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(make_results()))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    x = rng.normal(size=(4, 16))[labels] + rng.normal(size=(24, 16))
    np.savez(tmp_path / "f.npz", feats=x.astype(np.float32), feats_corrected=(x + rng.normal(size=x.shape)).astype(np.float32),
             labels=labels, meta=np.array(json.dumps({"random_init": True})))
    assert cli(["overlap", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "ov")]) == 0
    out = tmp_path / "rep"
    assert cli(["report", "--results", str(res_path), "--overlap", str(tmp_path / "ov" / "overlap.json"),
                "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "WARNING" in printed.err and "report.md" in printed.out
    text = (out / "report.md").read_text()
    assert "## Intra-modal overlap" in text and "| original |" in text and "| change |" in text
    ov = json.loads((tmp_path / "ov" / "overlap.json").read_text())
    assert f"{ov['original']['overlap']:.4f}" in text
    links = image_links(text)
    overlap_links = [link for link in links if "overlap_" in link]
    assert len(overlap_links) == 1 and len(links) == 8  # + 3 accuracy, 3 gain, 1 grid
    for rel in links:
        assert_png(out / rel, 300, 200)
    with pytest.raises(ClipimoError, match="'original'"):
        (tmp_path / "x.json").write_text("{}")
        cli(["report", "--results", str(res_path), "--overlap", str(tmp_path / "x.json"), "--out", str(out)])


def test_accuracy_plot_styles_pair_variants_by_colour(tmp_path):
    styles = plots.method_styles(METHODS + ["foo", "foo-imo"])
    for m in ("tip", "tipx", "gda", "foo"):
        assert styles[m]["color"] == styles[m + "-imo"]["color"]
        assert styles[m]["linestyle"] == "-" and styles[m + "-imo"]["linestyle"] == "--"
    assert len({styles[m]["color"] for m in ("tip", "tipx", "gda", "foo", "zs")}) == 5
    assert order_methods(["gda-imo", "foo-imo", "tip", "foo", "zs"]) == ["zs", "tip", "gda-imo", "foo", "foo-imo"]
    rows = [{"shots": k, "method": m, "mean": 50 + k, "std": 1.0, "n": 3} for k in (1, 2, 4, 8, 16) for m in ("tip", "tip-imo")]
    meta = make_results()["meta"]
    assert_figure(figures.accuracy_figure(rows, tmp_path / "a", "test", meta), ("png",), 200)
    with pytest.raises(ValueError):
        figures.accuracy_figure([], tmp_path / "b", "empty", meta)
    # The overlap figure of a record straight from diagnostics.
    rec = dg.compare_streams(rng_feats(), None, np.repeat(np.arange(3), 5))
    assert_figure(figures.overlap_figure(rec, tmp_path / "o"))


def rng_feats():
    return np.random.default_rng(1).normal(size=(15, 8))
