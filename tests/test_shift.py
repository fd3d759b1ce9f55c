import json

import numpy as np
import pytest
import torch

from clipimo import add_adapters, load_clip, save_adapters
from clipimo.cli import main
from clipimo.featurefile import synthetic_features
from clipimo.methods import METHODS, Problem
from clipimo.methods.predict import accuracy_at, logits_at

from conftest import TINY, put_image
from test_data_benchmarks import WNIDS, make_imagenet


@pytest.mark.parametrize("method", list(METHODS))
def test_fixed_point_accuracy_matches_the_search_and_restricts_classes(method):
    feats = synthetic_features(num_classes=12, shots=3, n_val=40, n_test=60, dim=16, seed=4)
    problem = Problem.from_features(feats)
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


@pytest.fixture(scope="module")
def shift_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift_root")
    make_imagenet(root, train_per_class=2)
    for wnid in WNIDS[::5]:
        put_image(root / "imagenet-adversarial" / "imagenet-a" / wnid / "a.jpg")
    for i in range(1000):
        put_image(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(i) / "x.jpeg")
    bb = load_clip(TINY)
    add_adapters(bb.model)
    save_adapters(bb.model, root / "adapter.safetensors")
    return root


def test_shift_cli_and_report(shift_root, tmp_path):
    out = tmp_path / "shift"
    assert main(["shift", "--root", str(shift_root), "--targets", "ImageNetV2,ImageNetA", "--shots", "1",
                 "--seeds", "1", "--methods", "zs,tip,tip-imo", "--augment-passes", "1", "--model", TINY,
                 "--adapter", str(shift_root / "adapter.safetensors"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--batch-size", "256"]) == 0
    record = json.loads((out / "shift.json").read_text())
    assert {(r["target"], r["method"]) for r in record["rows"]} == {
        (t, m) for t in ("ImageNet", "ImageNetV2", "ImageNetA") for m in ("zs", "tip", "tip-imo")}
    assert record["validation"][0]["protocol"] == "heldout" and not record["validation"][0]["tuned_on_test"]
    assert record["random_init"] is True
    assert all(0 <= r["test_acc"] <= 100 for r in record["rows"])
    results = {"meta": {"backbone": record["backbone"], "random_init": True, "methods": ["zs"], "shots": [1],
                        "seeds": [1], "datasets": ["x"]},
               "cells": [{"dataset": "x", "shots": 1, "seed": 1, "validation": {"protocol": "full"},
                          "methods": {"zs": {"test_acc": 50.0, "val_acc": 50.0, "hparams": {}}}}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", "--results", str(tmp_path / "results.json"), "--shift", str(out / "shift.json"),
                 "--out", str(tmp_path / "rep")]) == 0
    assert "## Distribution shift" in (tmp_path / "rep" / "report.md").read_text()
    assert np.isfinite([r["std"] for r in record["rows"]]).all()
