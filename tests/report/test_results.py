"""results.csv, CLIP_benchmark-shaped export, ``clipimo results merge`` and the report's extra
metrics and figure formats."""
from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import assert_figure
from test_report import METHODS, acc, image_links, make_results, table_row

from clipimo.cli.app import main
from clipimo.experiment.grid import write_results
from clipimo.report.export import clip_benchmark_records, merge_runs, results_csv, write_clip_benchmark


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_results_csv_names_backbone_weights_adapter_and_metrics():
    res = make_results(datasets=("EuroSAT",), shots=(2,), seeds=(1, 2))
    rows = rows_of(results_csv(res))
    assert len(rows) == 2 * len(METHODS)
    r = next(r for r in rows if r["method"] == "tipx-imo" and r["seed"] == "2")
    assert (r["model"], r["pretrained"], r["adapter"]) == ("clipimo-tiny-vit", "random-init(seed=0)", "adapters/imo.safetensors")
    assert r["adapter_sha256"] == "ab" * 32 and r["random_init"] == "True" and r["validation"] == "full"
    top1 = acc(0, 2, 2, "tipx-imo")
    assert float(r["test_acc"]) == pytest.approx(top1) and float(r["test_top5"]) == pytest.approx(top1 + 20)
    assert float(r["test_mean_per_class_recall"]) == pytest.approx(top1 - 2)
    assert float(r["gamma"]) == pytest.approx(2 * 0.6122448979591837, abs=1e-12) and r["alpha"] == "3.0"
    assert next(r for r in rows if r["method"] == "zs")["alpha"] == ""


def test_clip_benchmark_records_use_fractions_and_its_field_names(tmp_path):
    res = make_results(datasets=("EuroSAT",), shots=(4,), seeds=(3,))
    records = clip_benchmark_records(res)
    assert len(records) == len(METHODS)
    rec = records["EuroSAT_k4_s3_tip-imo.json"]
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(rec)
    assert rec["dataset"] == "EuroSAT" and rec["model"] == "clipimo-tiny-vit" and rec["pretrained"] == "random-init(seed=0)"
    assert rec["task"] == "fewshot_classification" and records["EuroSAT_k4_s3_zs.json"]["task"] == "zeroshot_classification"
    top1 = acc(0, 4, 3, "tip-imo")
    assert rec["metrics"] == pytest.approx({"acc1": top1 / 100, "acc5": (top1 + 20) / 100,
                                            "mean_per_class_recall": (top1 - 2) / 100})
    assert (rec["shots"], rec["seed"], rec["method"], rec["random_init"]) == (4, 3, "tip-imo", True)
    # Older results without top-5/recall: only acc1, nothing invented.
    for cell in res["cells"]:
        for r in cell["methods"].values():
            del r["test_top5"], r["test_mean_per_class_recall"]
    assert set(clip_benchmark_records(res)["EuroSAT_k4_s3_tip.json"]["metrics"]) == {"acc1"}
    folder = write_clip_benchmark(tmp_path, res)
    assert len(list(folder.glob("*.json"))) == len(METHODS)
    assert json.loads((folder / "EuroSAT_k4_s3_gda.json").read_text())["metrics"]["acc1"] == pytest.approx(acc(0, 4, 3, "gda") / 100)


def test_cli_results_merge_and_export(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_results(a, make_results(datasets=("EuroSAT",), shots=(1,), seeds=(1,)))
    res_b = make_results(datasets=("Caltech101",), shots=(1, 2), seeds=(1,))
    res_b["meta"]["backbone"] = {"model": "ViT-B-16", "weights": "openai", "random_init": False}
    res_b["meta"]["random_init"] = False
    write_results(b, res_b)
    assert len(list((a / "clip_benchmark").glob("*.json"))) == len(METHODS)  # written with every run
    out = tmp_path / "table.csv"
    assert main(["results", "merge", str(a), str(b / "results.json"), "--out", str(out)]) == 0
    rows = rows_of(out.read_text())
    assert len(rows) == 3 * len(METHODS) and list(rows[0])[:5] == ["run", "dataset", "shots", "seed", "method"]
    assert {r["run"] for r in rows} == {str(a), str(b / "results.json")}
    assert {(r["dataset"], r["model"], r["pretrained"]) for r in rows} == {
        ("EuroSAT", "clipimo-tiny-vit", "random-init(seed=0)"), ("Caltech101", "ViT-B-16", "openai")}
    assert f"{3 * len(METHODS)} rows from 2 run(s)" in capsys.readouterr().out
    assert merge_runs([a]) == merge_runs([a / "results.json"]).replace(str(a / "results.json"), str(a))
    (a / "clip_benchmark" / "EuroSAT_k1_s1_zs.json").unlink()
    assert main(["results", "export", str(a)]) == 0
    assert (a / "clip_benchmark" / "EuroSAT_k1_s1_zs.json").is_file()
    assert main(["results", "merge", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: no results.json there" in capsys.readouterr().err


def test_report_has_top5_recall_tables_and_figures_in_every_format(tmp_path):
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(make_results()))
    out = tmp_path / "rep"
    assert main(["report", "--results", str(res_path), "--out", str(out), "--format", "svg,pdf,png", "--dpi", "120"]) == 0
    text = (out / "report.md").read_text()
    # EuroSAT, 1 shot, tip: top-5 = top-1 + 20 per seed; mean = seed 2's value, ddof=1 std of values 0.5 apart = 0.5.
    row = table_row(text, "EuroSAT", "## Top-5 accuracy (%)")
    assert row[1] == "1" and row[3] == f"{acc(1, 1, 2, 'tip') + 20:.2f} ± 0.50"
    assert "## Mean per-class recall (%)" in text and "over n = 3 seeds" in text
    stems = ["acc_grid", "acc_average", "acc_eurosat", "gain_average", "gain_caltech101"]
    for stem in stems:
        assert_figure({f: out / "plots" / f"{stem}.{f}" for f in ("png", "pdf", "svg")}, ("png", "pdf", "svg"), 120)
    assert "plots/acc_grid.png" in image_links(text) and "[PDF](plots/acc_grid.pdf)" in text
    # Only vector formats: the SVG is shown inline.
    assert main(["report", "--results", str(res_path), "--out", str(tmp_path / "vec"), "--format", "svg,pdf"]) == 0
    assert "plots/acc_grid.svg" in image_links((tmp_path / "vec" / "report.md").read_text())
    assert not list((tmp_path / "vec" / "plots").glob("*.png"))


def test_weights_are_named_by_tag_or_file_name_with_the_hash_kept(tmp_path):
    """People read `openai` or `my_clip.pt`; the sha256 that identifies a file stays in `weights`."""
    res = make_results(datasets=("EuroSAT",), shots=(1,), seeds=(1,), random_init=False, shift=False)
    sha = "0123456789abcdef" * 4
    res["meta"]["backbone"] = {"model": "ViT-B-16", "weights": f"sha256:{sha}", "random_init": False}
    res["meta"]["source"] = {"model": "ViT-B-16", "pretrained": "/data/weights/my_clip.pt", "adapter": None}
    rec = clip_benchmark_records(res)["EuroSAT_k1_s1_tip.json"]
    assert (rec["pretrained"], rec["weights"]) == ("my_clip.pt", f"sha256:{sha}")
    row = rows_of(results_csv(res))[0]
    assert (row["pretrained"], row["weights"]) == ("my_clip.pt", f"sha256:{sha}")
    from clipimo.report.builder import build_report

    text = build_report(res, tmp_path / "rep").read_text()
    assert f"weights `my_clip.pt` (sha256 `{sha[:16]}…`)" in text
    del res["meta"]["source"]  # a run from before sources were recorded: the hash, shortened
    assert clip_benchmark_records(res)["EuroSAT_k1_s1_tip.json"]["pretrained"] == f"weights file (sha256 {sha[:12]}...)"
    res["meta"]["backbone"]["weights"] = "tag:openai"
    assert clip_benchmark_records(res)["EuroSAT_k1_s1_tip.json"]["pretrained"] == "openai"
    res["meta"]["backbone"]["weights"] = "hf-hub:org/repo/open_clip_model.safetensors@abc123"
    assert clip_benchmark_records(res)["EuroSAT_k1_s1_tip.json"]["pretrained"] == "hf-hub:org/repo/open_clip_model.safetensors"


def test_report_paths_are_relative_to_the_report_folder(tmp_path):
    from clipimo.report.builder import build_report

    res = make_results(datasets=("EuroSAT",), shots=(1,), seeds=(1,), shift=False)
    res["meta"]["adapter"] = {"path": str(tmp_path / "adapters" / "imo.safetensors"), "sha256": "ab" * 32}
    text = build_report(res, tmp_path / "runs" / "rep", results_path=str(tmp_path / "runs" / "results.json")).read_text()
    assert "- **Adapter:** `../../adapters/imo.safetensors`" in text
    assert "- **Results file:** `../results.json`" in text and str(tmp_path) not in text
