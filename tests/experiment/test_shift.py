import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY
from test_shift_wiring import small_imagenet, small_specs  # noqa: F401  (fixtures)

from clipimo.cli.app import main
from clipimo.features.file import synthetic_features
from clipimo.methods.common import Problem
from clipimo.methods.names import base_method
from clipimo.methods.predict import accuracy_at, logits_at
from clipimo.methods.registry import METHODS


@pytest.mark.parametrize("method", [m for m in METHODS if base_method(m) != "tda"])  # TDA has no fixed point
def test_fixed_point_accuracy_matches_the_search_and_restricts_classes(method):
    feats = synthetic_features(num_classes=12, shots=3, n_val=40, n_test=60, dim=16, seed=4)
    problem = dataclasses.replace(Problem.from_features(feats), text_norms=torch.linspace(4, 8, 12))
    searched = METHODS[method](problem)
    assert accuracy_at(problem, problem.test, method, searched.hparams) == searched.test_acc
    classes = [1, 4, 5, 9]
    logits = torch.cat([lg for _, lg in logits_at(problem, problem.test, method, searched.hparams)])
    keep = torch.isin(problem.test.labels, torch.tensor(classes))
    sub_labels = torch.tensor([classes.index(int(y)) for y in problem.test.labels[keep]])
    expected = 100.0 * float((logits[keep][:, classes].argmax(1) == sub_labels).float().mean())
    from clipimo.methods.common import Split

    split = Split(problem.test.feats[keep], problem.test.feats_corrected[keep], sub_labels)
    assert accuracy_at(problem, split, method, searched.hparams, classes=classes) == pytest.approx(expected)


def test_shift_cli_and_report(small_imagenet, small_specs, tmp_path, capsys):
    """Tables, records and the report section; the numbers themselves are checked against a hand
    computation in test_shift_wiring."""
    out = tmp_path / "shift"
    assert main(["shift", "--root", str(small_imagenet), "--targets", "ImageNetA", "--shots", "1",
                 "--seeds", "1,2", "--methods", "zs,tip,tip-imo", "--augment-passes", "1", "--model", TINY,
                 "--adapter", str(small_imagenet / "adapter.safetensors"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr()
    record = json.loads((out / "shift.json").read_text())
    # a log file shows each unit of work: per seed, the tuning on the source, then each target
    steps = re.findall(r"^shift (\d)/4: seed (\d): (\S+)", printed.err, re.MULTILINE)
    assert steps == [("1", "1", "3"), ("2", "1", "ImageNetA"), ("3", "2", "3"), ("4", "2", "ImageNetA")]
    assert {(r["target"], r["method"]) for r in record["rows"]} == {
        (t, m) for t in ("ImageNet", "ImageNetA") for m in ("zs", "tip", "tip-imo")}
    assert record["validation"][0]["protocol"] == "heldout" and not record["validation"][0]["tuned_on_test"]
    assert record["random_init"] is True and record["adapter"]["sha256"]
    for row in record["rows"]:  # mean and std over the two seeds of the per-seed records
        accs = [r["test_acc"] for r in record["per_seed"] if (r["target"], r["method"]) == (row["target"], row["method"])]
        assert len(accs) == row["n"] == 2
        assert row["test_acc"] == pytest.approx(float(np.mean(accs)))
        assert row["std"] == pytest.approx(float(np.std(accs, ddof=1)))  # sample std (ddof=1), as the results tables
    assert "RANDOM-INIT" in printed.out
    results = {"meta": {"backbone": record["backbone"], "adapter": record["adapter"], "random_init": True,
                        "methods": ["zs"], "shots": [1],
                        "seeds": [1], "datasets": ["x"]},
               "cells": [{"dataset": "x", "shots": 1, "seed": 1, "validation": {"protocol": "full"},
                          "methods": {"zs": {"test_acc": 50.0, "val_acc": 50.0, "hparams": {}}}}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", "--results", str(tmp_path / "results.json"), "--shift", str(out / "shift.json"),
                 "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Distribution shift" in report
    tip_a = next(r for r in record["rows"] if (r["target"], r["method"]) == ("ImageNetA", "tip-imo"))
    assert f"{tip_a['test_acc']:.2f}" in report


def test_shift_class_counts_are_checked_before_the_model_loads(small_imagenet, tmp_path, capsys, monkeypatch):
    """The fixture's ImageNet has a few classes, the registry expects 1,000 (no small_specs here)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the cheap checks")

    monkeypatch.setattr("clipimo.model.backbone.load_clip", refuse)
    assert main(["shift", "--root", str(small_imagenet), "--targets", "ImageNetA", "--shots", "1",
                 "--methods", "zs", "--model", TINY, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ImageNet: found" in err and "expected 1000" in err and "\n" not in err
