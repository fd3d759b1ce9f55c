"""The features file and ``clipimo evaluate``: validation errors, and the JSON contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipimo.cli import app as cli
from clipimo.errors import ClipimoError
from clipimo.features.file import FEATURE_KEYS, feature_arrays, load_features, save_features, synthetic_features
from clipimo.methods.evaluate import evaluate_features, results_table
from clipimo.utils.device import full_float32

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
        assert set(z.files) == set(FEATURE_KEYS) | {"logit_scale", "logit_bias", "text_norms", "cache_views",
                                                   "cache_views_corrected"}
    bare = npz.parent / "bare.npz"
    save_features(bare, synthetic_features(num_classes=5, shots=3, dim=16, views=0))
    with np.load(bare, allow_pickle=False) as z:
        assert set(z.files) == set(FEATURE_KEYS) | {"logit_scale", "logit_bias", "text_norms"}  # no views: none written


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
    with pytest.raises(ClipimoError, match=r"features file .*nope\.npz does not exist"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(ClipimoError, match=r"features file .*folder\.npz is a folder; expected a file"):
        load_features(tmp_path / "folder.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ClipimoError, match="junk.npz: not a readable .npz"):
        load_features(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", text_weights=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ClipimoError, match="pickled.npz: not a readable .npz"):
        load_features(tmp_path / "pickled.npz")


def check_contract(results, methods):
    assert list(results) == methods
    for name, r in results.items():
        assert set(r) == {"test_acc", "val_acc", "hparams", "test_top5", "test_mean_per_class_recall"}
        for split, n in (("val_acc", 30), ("test_acc", 25), ("test_top5", 25)):
            assert type(r[split]) is float and 0.0 <= r[split] <= 100.0
            assert r[split] * n / 100 == pytest.approx(round(r[split] * n / 100))  # percent of hits
        assert set(r["hparams"]) == HPARAMS[name]
        assert all(type(v) is float for v in r["hparams"].values())


def test_evaluate_features_api(feats):
    methods = list(HPARAMS)
    check_contract(evaluate_features(feats, ",".join(methods)), methods)


def test_search_device_plumbing(feats):
    """Every spelling of a device reaches the search; the choices are the CPU's."""
    methods = ["tip-imo", "tipx"]
    want = evaluate_features(feats, methods, device="cpu")
    assert evaluate_features(feats, methods, device=torch.device("cpu")) == want
    assert evaluate_features(feats, methods, device="auto") == want  # CPU here; CUDA where there is one
    if torch.cuda.is_available():
        assert evaluate_features(feats, methods, device="cuda") == want


def test_full_float32_restores_the_matmul_precision():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as a training run may leave it
    try:
        with full_float32():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", ["evaluate", "run"])
def test_cuda_without_cuda_is_one_line_error(tmp_path, npz, capsys, command):
    argv = (["--features", str(npz)] if command == "evaluate"
            else ["--datasets", "x", "--methods", "zs", "--out", str(tmp_path / "o")])
    assert cli.main([command, *argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err and err.startswith(f"clipimo {command}: error:")


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
    assert capsys.readouterr().out.startswith("| method | val top-1 | test top-1 | test top-5 | test recall | hparams |")


def test_cli_gda_on_a_file_without_views_is_a_clear_error(monkeypatch, tmp_path, capsys):
    bare = tmp_path / "bare.npz"
    save_features(bare, synthetic_features(num_classes=5, shots=3, dim=16, views=0))
    assert run_cli(monkeypatch, "--features", str(bare), "--methods", "zs,gda-imo") == 2
    err = capsys.readouterr().err
    assert "gda-imo fits on every augmented view" in err and "cache_views / cache_views_corrected" in err
    assert "clipimo run --save-features" in err and "Traceback" not in err


def test_cli_errors(monkeypatch, npz, capsys):
    assert run_cli(monkeypatch, "--features", str(npz), "--device", "tpu") == 2
    assert "device 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a bad choice is argparse's usage error, before any work
        run_cli(monkeypatch, "--features", str(npz), "--methods", "zs,bogus")
    assert exit_.value.code == 2 and "argument --methods: invalid choice(s) bogus" in capsys.readouterr().err


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
    table = results_table({"tip": {"val_acc": 50.0, "test_acc": 40.0, "test_top5": 90.0,
                                  "test_mean_per_class_recall": 38.5, "hparams": {"alpha": 1.0, "beta": 2.0}}})
    assert table.splitlines()[1].split() == ["tip", "50.00", "40.00", "90.00", "38.50", "alpha=1,", "beta=2"]


# ---- issue 11: clean errors, nothing half-written, results shown even when the JSON fails -------

@pytest.fixture()
def feats_file(tmp_path):
    path = tmp_path / "f.npz"
    save_features(path, synthetic_features(num_classes=3, shots=2, n_val=6, n_test=6, dim=8))
    return path


def test_results_are_printed_when_the_json_cannot_be_written(feats_file, tmp_path, capsys):
    folder = tmp_path / "a_folder.json"  # the right suffix: refused only when it is written
    folder.mkdir()
    assert cli.main(["evaluate", "--features", str(feats_file), "--methods", "zs", "--json", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("method") and "zs" in out  # the table came first
    assert err.splitlines()[-1] == f"clipimo evaluate: error: {folder} is a folder; expected the path of a file to write"


def test_a_full_disk_is_one_message_and_leaves_nothing(feats_file, tmp_path, capsys, monkeypatch):
    import errno
    import os
    from pathlib import Path

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "out" / "e.json"
    assert cli.main(["evaluate", "--features", str(feats_file), "--methods", "zs", "--json", str(target)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"clipimo evaluate: error: cannot write {target}: No space left on device"
    assert list(target.parent.iterdir()) == []  # no partial file, no temporary file


def test_damaged_features_files_are_one_clear_error(feats_file, tmp_path, capsys):
    import io
    import zipfile

    arrays = dict(np.load(feats_file))
    bad_meta = tmp_path / "meta.npz"
    np.savez(bad_meta, **arrays, meta=np.array("{not json"))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 512)})
    absurd = tmp_path / "absurd.npz"
    with zipfile.ZipFile(absurd, "w") as zf:
        zf.writestr("text_weights.npy", header.getvalue() + b"\0" * 64)
    text = tmp_path / "text.npz"
    text.write_text("path,label\n")
    expected = {bad_meta: f"{bad_meta}: its 'meta' entry is not valid JSON",
                absurd: f"{absurd}: array 'text_weights' declares shape (1000000000000, 512) of float32 "
                        "(2048000000000000 bytes) but holds 64 bytes",
                text: f"{text}: not a readable .npz features file"}
    for path, message in expected.items():
        assert cli.main(["evaluate", "--features", str(path), "--methods", "zs"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"clipimo evaluate: error: {message}") and err.count("\n") == 1, err


def test_device_cuda_without_cuda_is_one_clear_error(feats_file, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["evaluate", "--features", str(feats_file), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == ("clipimo evaluate: error: --device cuda: CUDA is not available on this "
                                               "machine (use --device cpu)")


def test_ctrl_c_prints_one_line_and_exits_130(feats_file, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clipimo.methods.evaluate.run_methods", interrupted)
    try:
        rc = cli.main(["evaluate", "--features", str(feats_file)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")
    assert rc == 130
    assert capsys.readouterr().err == "interrupted; rerun the same command to resume\n"
