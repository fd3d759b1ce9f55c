"""LP++, ZS-LP, CLAP and TDA in the commands: `--methods all`, TDA computed once per dataset and
seed and shared by the shots cells, options in the run fingerprint, the official TDA check before
any encoding, saved linear-probe classifiers, TDA's refusals, its null val in tables and exports.
The backbone is the tiny RANDOM-INIT model: the accuracies measure nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from beyond_features import views_task
from test_runner import _args, task  # noqa: F401  (the module fixture)

from clipimo.cli.app import main
from clipimo.errors import ClipimoError
from clipimo.experiment.grid import RunConfig
from clipimo.features.file import feature_arrays, load_features, validate_features
from clipimo.methods import clap, lpp, tda
from clipimo.methods.classifier import Classifier, best_method, load_classifier
from clipimo.methods.evaluate import results_table, run_methods
from clipimo.methods.names import METHOD_NAMES
from clipimo.methods.registry import METHODS
from clipimo.report.export import clip_benchmark_records, results_csv

PEERS = ["lp++", "lp++-imo", "zs-lp", "zs-lp-imo", "clap", "clap-imo", "tda", "tda-imo"]
META = {"backbone": {"model": "m", "weights": "w"}, "adapter": {"sha256": "ab" * 32}}


def features(seed: int = 0):
    feats = views_task(num_classes=5, shots=4, passes=2, dim=12, n_val=20, n_test=25, seed=seed)
    return validate_features({**feature_arrays(feats), "text_norms": np.linspace(5, 9, 5).astype(np.float32)})


def test_vocabulary_and_all():
    assert set(PEERS) <= set(METHOD_NAMES) and tuple(METHODS) == METHOD_NAMES
    assert METHOD_NAMES[:3] == ("zs", "tda", "tda-imo")   # TDA sits with zero-shot


def test_evaluate_all_and_official_tda_refused_before_any_work(tmp_path, capsys, monkeypatch):
    path = tmp_path / "f.npz"
    np.savez(path, **feature_arrays(features()))
    ran = []
    monkeypatch.setattr(lpp, "train", lambda *a, **k: ran.append(a))
    assert main(["evaluate", "--features", str(path), "--methods", "lp++,tda", "--tda-config", "official"]) == 2
    assert "--tda-config official: no official configuration for dataset None" in capsys.readouterr().err
    assert ran == []                                          # LP++ never started
    monkeypatch.undo()
    assert main(["evaluate", "--features", str(path), "--methods", "all", "--json", str(tmp_path / "r.json"),
                 "--seed", "2", "--clap-batch", "8"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results) == list(METHOD_NAMES)
    assert results["tda"]["val_acc"] is None and results["lp++"]["hparams"].keys() == {"epoch"}
    table = capsys.readouterr().out
    assert table.splitlines()[2].split()[:2] == ["tda", "-"]


def test_format_table_csv_and_export_with_null_val():
    results = {"zs": {"val_acc": 50.0, "test_acc": 40.0, "hparams": {}},
               "tda": {"val_acc": None, "test_acc": 41.0, "hparams": {}}}
    assert results_table(results).splitlines()[2].split()[:3] == ["tda", "-", "41.00"]
    assert best_method(results) == "zs"
    with pytest.raises(ClipimoError, match="select nothing on val"):
        best_method({"tda": results["tda"]})
    run = {"meta": {}, "cells": [{"dataset": "d", "shots": 1, "seed": 1, "methods": results}]}
    assert "d,1,1,tda,,41.0000" in results_csv(run)
    assert clip_benchmark_records(run)["d_k1_s1_tda.json"]["task"] == "zeroshot_classification"


@pytest.mark.parametrize("method", ["lp++-imo", "clap", "zs-lp-imo"])
def test_linear_probe_classifier_predicts_as_evaluated(method, tmp_path):
    feats = features(1)
    result = run_methods(feats, [method])[method]
    Classifier.from_features(feats, method, result.hparams, META, settings=result.meta).save(tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    assert loaded.cache_views is None and loaded.head                 # the head, not the views
    logits = loaded.logits(torch.from_numpy(feats.test_feats), torch.from_numpy(feats.test_feats_corrected))
    assert 100 * float((logits.argmax(1).numpy() == feats.test_labels).mean()) == pytest.approx(result.test_acc)
    if method.startswith("lp++"):
        head = lpp.LppHead(**loaded.head)
        want = head.logits(torch.from_numpy(feats.test_feats_corrected), torch.from_numpy(feats.test_feats),
                           torch.from_numpy(feats.text_weights))
    else:
        want = clap.head_logits(torch.from_numpy(feats.test_feats_corrected if "imo" in method else feats.test_feats),
                                loaded.head["prototypes"], 100.0)
    torch.testing.assert_close(logits, want)


def test_tda_cannot_be_saved():
    with pytest.raises(ClipimoError, match="no fixed classifier to save"):
        Classifier.from_features(features(), "tda-imo", {}, META)


def test_method_options_enter_the_fingerprint(tmp_path):
    base = RunConfig(root=".", datasets=["x"]).method_fingerprint()
    assert RunConfig(root=".", datasets=["x"], clap_batch=32).method_fingerprint() != base
    assert RunConfig(root=".", datasets=["x"], tda_config="official").method_fingerprint() != base
    path = tmp_path / "t.yaml"
    doc = ("positive: {{enabled: true, shot_capacity: 3, alpha: {a}, beta: 5.0}}\n"
           "negative: {{enabled: true, shot_capacity: 2, alpha: 0.117, beta: 1.0,\n"
           "  entropy_threshold: {{lower: 0.2, upper: 0.5}}, mask_threshold: {{lower: 0.03, upper: 1.0}}}}\n")
    path.write_text(doc.format(a=2.0))
    first = RunConfig(root=".", datasets=["x"], tda_config=str(path)).method_fingerprint()
    path.write_text(doc.format(a=3.0))                 # same path, other content: another fingerprint
    assert RunConfig(root=".", datasets=["x"], tda_config=str(path)).method_fingerprint() != first


def test_run_shares_tda_across_shots_and_refuses_official_for_a_custom_task(task, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys):
    out = tmp_path / "refused"
    assert main(_args(task, out, "--methods", "zs,tda", "--tda-config", "official")) == 2
    assert "--tda-config official: no official configuration" in capsys.readouterr().err
    assert not (out / "cells").exists()

    streams = []
    real = tda.build_stream
    monkeypatch.setattr(tda, "build_stream", lambda *a, **k: streams.append(a[1]) or real(*a, **k))
    out = tmp_path / "res"
    assert main(_args(task, out, "--methods", "zs,tda,tda-imo,lp++-imo,clap", "--save-features")) == 0
    assert sorted(streams) == [False, False, True, True]      # 2 seeds x (tda, tda-imo), not x 2 shots
    results = json.loads((out / "results.json").read_text())
    cells = {(c["shots"], c["seed"]): c for c in results["cells"]}
    for seed in (1, 2):
        for m in ("tda", "tda-imo"):
            assert cells[(1, seed)]["methods"][m] == cells[(2, seed)]["methods"][m]
            assert cells[(1, seed)]["settings"][m]["shared_across_shots"] is True
        feats = load_features(out / "features" / f"{cells[(1, seed)]['dataset']}_k1_s{seed}.npz")
        assert feats.text_norms is not None and (feats.text_norms > 0).all()
        assert cells[(1, seed)]["methods"]["tda"]["val_acc"] is None
        assert cells[(1, seed)]["settings"]["tda"]["order_seed"] == seed
    summary = {(r["method"], r["shots"]) for r in results["summary"]}
    assert {("tda", 1), ("tda", 2), ("clap", 1), ("lp++-imo", 2)} <= summary
    report = (out / "results.md").read_text()
    assert "tda-imo" in report and "clap" in report
