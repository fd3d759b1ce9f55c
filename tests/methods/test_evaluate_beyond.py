"""``clipimo evaluate`` with the methods beyond the paper: options, settings and the results JSON shape."""
from __future__ import annotations

import json

import numpy as np
from beyond_features import views_task

from clipimo.cli import app as cli
from clipimo.features.file import feature_arrays, save_features
from clipimo.methods import tipf
from clipimo.methods.common import MethodOptions, Problem

NEW = ["proker", "proker-imo", "ape", "ape-imo", "tip-f", "tip-f-imo"]


def test_cli_runs_every_new_method_with_seed_and_batch(tmp_path, capsys):
    feats = views_task(n_val=12, n_test=15, seed=2)
    path = tmp_path / "f.npz"
    save_features(path, {**feature_arrays(feats), "meta": np.array(json.dumps({"dataset": "DescribableTextures"}))})
    out = tmp_path / "r.json"
    argv = ["evaluate", "--features", str(path), "--methods", ",".join(NEW), "--seed", "4", "--tipf-batch", "7",
            "--proker-grid", "official", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert list(results) == NEW
    assert all(set(r) == {"test_acc", "val_acc", "hparams", "test_top5", "test_mean_per_class_recall"}
               for r in results.values())
    assert set(results["proker"]["hparams"]) == {"beta", "lmbda"}
    assert set(results["ape-imo"]["hparams"]) == {"alpha", "beta", "gamma"}
    assert set(results["tip-f"]["hparams"]) == {"alpha", "beta"}
    assert "no CuPL" in printed and "views=all" in printed and "seed=4" in printed and "grid=official" in printed
    # the seed and batch reach Tip-F: the same numbers as calling it directly
    direct = tipf.run(Problem.from_features(feats), False, MethodOptions(seed=4, tipf_batch=7))
    assert results["tip-f"] == direct.as_dict()  # top-5 and recall too, from the same test pass


def test_cli_names_a_bad_option(tmp_path, capsys):
    path = tmp_path / "f.npz"
    save_features(path, feature_arrays(views_task(seed=1)))
    assert cli.main(["evaluate", "--features", str(path), "--methods", "proker", "--proker-grid", "official"]) != 0
    assert "--proker-grid official: no official configuration for dataset None" in capsys.readouterr().err
    for method, flag in (("ape", "--ape-config"), ("tip-f", "--tipf-config")):
        assert cli.main(["evaluate", "--features", str(path), "--methods", method, flag, "official"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} official: no official configuration for dataset None" in err and "Traceback" not in err
