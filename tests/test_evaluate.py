"""The §8 features file and ``clipimo evaluate``: validation errors, and the JSON contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clipimo import cli
from clipimo.errors import ClipimoError
from clipimo.evaluate import evaluate_features, format_table
from clipimo.featurefile import FEATURE_KEYS, feature_arrays, load_features, save_features, synthetic_features

HPARAMS = {"zs": set(), "tip": {"alpha", "beta"}, "tip-imo": {"alpha", "beta"},
           "tipx": {"alpha", "beta", "gamma"}, "tipx-imo": {"alpha", "beta", "gamma"},
           "gda": {"alpha"}, "gda-imo": {"alpha"}}


@pytest.fixture(scope="module")
def feats():
    return synthetic_features(num_classes=5, shots=3, n_val=30, n_test=25, dim=16, seed=7)


@pytest.fixture
def npz(tmp_path, feats):
    path = tmp_path / "feats.npz"
    save_features(path, feats)
    return path


def arrays_of(feats):
    return feature_arrays(feats)


def test_save_load_roundtrip_atomic(npz, feats):
    loaded = load_features(npz)
    for key in FEATURE_KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(feats, key))
    assert [p.name for p in npz.parent.iterdir()] == ["feats.npz"]  # no temp file left
    np.testing.assert_array_equal(loaded.cache_views_corrected, feats.cache_views_corrected)
    with np.load(npz, allow_pickle=False) as z:
        assert set(z.files) == set(FEATURE_KEYS) | {"logit_scale", "logit_bias", "cache_views", "cache_views_corrected"}
    bare = npz.parent / "bare.npz"
    save_features(bare, synthetic_features(num_classes=5, shots=3, dim=16, views=0))
    with np.load(bare, allow_pickle=False) as z:
        assert set(z.files) == set(FEATURE_KEYS) | {"logit_scale", "logit_bias"}  # no views: none written


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("val_labels"), r"missing key\(s\) val_labels"),
    (lambda a: a.update(test_feats_corrected=a["test_feats_corrected"][:-1]),
     r"'test_feats_corrected' has shape \(24, 16\), expected \(25, 16\)"),
    (lambda a: a.update(text_weights=a["text_weights"].T), r"'cache_keys' has shape \(15, 16\), expected \[N, 5\].*must be \[D, C\]"),
    (lambda a: a.update(cache_labels=a["cache_labels"][:-2]), r"'cache_labels' has shape \(13,\), expected \(15,\)"),
    (lambda a: a.update(val_labels=a["val_labels"] + 5), r"'val_labels' has labels in \[5, 9\], expected \[0, 4\]"),
    (lambda a: a.update(val_labels=a["val_labels"].astype(np.float32)), r"'val_labels' has dtype float32"),
    (lambda a: a.update(cache_keys=2 * a["cache_keys"]), r"'cache_keys' rows are not L2-normalised"),
    (lambda a: a.update(text_weights=3 * a["text_weights"]), r"'text_weights' columns are not L2-normalised"),
    (lambda a: a.update(val_feats=np.full_like(a["val_feats"], np.nan)), r"'val_feats' contains NaN"),
])
def test_bad_files_give_clear_errors(tmp_path, feats, change, message):
    arrays = arrays_of(feats)
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ClipimoError, match=message) as err:
        load_features(path)
    assert str(path) in str(err.value)
    with pytest.raises(ClipimoError):  # saving refuses the same arrays
        save_features(tmp_path / "out.npz", arrays)
    assert not (tmp_path / "out.npz").exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(ClipimoError, match="not found"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ClipimoError, match="junk.npz: not a readable .npz"):
        load_features(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", text_weights=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ClipimoError, match="pickled.npz: not a readable .npz"):
        load_features(tmp_path / "pickled.npz")


def check_contract(results, methods):
    assert list(results) == methods
    for name, r in results.items():
        assert set(r) == {"test_acc", "val_acc", "hparams"}
        for split, n in (("val_acc", 30), ("test_acc", 25)):
            assert type(r[split]) is float and 0.0 <= r[split] <= 100.0
            assert r[split] * n / 100 == pytest.approx(round(r[split] * n / 100))  # percent of hits
        assert set(r["hparams"]) == HPARAMS[name]
        assert all(type(v) is float for v in r["hparams"].values())


def test_evaluate_features_api(feats):
    methods = list(HPARAMS)
    check_contract(evaluate_features(feats, ",".join(methods)), methods)


def run_cli(monkeypatch, *argv):
    return cli.main(["evaluate", *argv])


def test_cli_writes_section8_json(monkeypatch, tmp_path, npz, capsys):
    out = tmp_path / "res" / "out.json"
    methods = ["zs", "tip", "tip-imo", "tipx", "tipx-imo"]
    assert run_cli(monkeypatch, "--features", str(npz), "--methods", ",".join(methods),
                   "--json", str(out), "--device", "cpu") == 0
    results = json.loads(out.read_text())
    check_contract(results, methods)
    assert results == evaluate_features(npz, methods)
    printed = capsys.readouterr().out
    assert all(m in printed for m in methods) and "test top-1" in printed
    assert run_cli(monkeypatch, "--features", str(npz), "--methods", "gda", "--markdown") == 0
    assert capsys.readouterr().out.startswith("| method | val top-1 | test top-1 | hparams |")


def test_cli_gda_on_a_file_without_views_is_a_clear_error(monkeypatch, tmp_path, capsys):
    bare = tmp_path / "bare.npz"
    save_features(bare, synthetic_features(num_classes=5, shots=3, dim=16, views=0))
    assert run_cli(monkeypatch, "--features", str(bare), "--methods", "zs,gda-imo") == 2
    err = capsys.readouterr().err
    assert "gda-imo fits on every augmented view" in err and "cache_views / cache_views_corrected" in err
    assert "clipimo run --save-features" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--methods", "zs,bogus"], "unknown or missing method"),
    (["--device", "tpu"], "device 'tpu'"),
])
def test_cli_errors(monkeypatch, npz, capsys, argv, message):
    assert run_cli(monkeypatch, "--features", str(npz), *argv) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_file(monkeypatch, tmp_path, feats, capsys):
    arrays = arrays_of(feats)
    del arrays["cache_keys_corrected"]
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out.json"
    assert run_cli(monkeypatch, "--features", str(tmp_path / "bad.npz"), "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "cache_keys_corrected" in err
    assert not out.exists()


def test_format_table_plain():
    table = format_table({"tip": {"val_acc": 50.0, "test_acc": 40.0, "hparams": {"alpha": 1.0, "beta": 2.0}}})
    assert table.splitlines()[1].split() == ["tip", "50.00", "40.00", "alpha=1,", "beta=2"]
