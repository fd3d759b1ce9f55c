"""Errors that need no model come before any model loads: each command below fails with its one
line while loading a backbone would fail the test."""
import pytest
from conftest import TINY, make_task

from clipimo.cli.app import main


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a backbone fails the test (the checks must not need one)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the cheap checks")

    monkeypatch.setattr("clipimo.model.backbone.load_clip", refuse)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "a model was loaded" not in err and "\n" not in err
    return err


def test_misspelt_dataset_is_named_with_a_suggestion(tmp_path, capsys, no_model):
    err = _error(capsys, ["run", "--datasets", "caltec101", "--model", TINY, "--methods", "zs",
                          "--out", str(tmp_path / "o")])
    assert "unknown dataset 'caltec101'" in err and "did you mean Caltech101?" in err
    err = _error(capsys, ["features", "--task", "eurosatt", "--shots", "1", "--model", TINY,
                          "--out", str(tmp_path / "f.npz")])
    assert "unknown dataset 'eurosatt'" in err and "did you mean EuroSAT?" in err
    err = _error(capsys, ["run", "--datasets", "qqqq", "--model", TINY, "--methods", "zs", "--out", str(tmp_path / "o")])
    assert "unknown dataset 'qqqq'" in err and "did you mean" not in err


def test_imo_methods_without_adapter_fail_before_loading(task, tmp_path, capsys, no_model):
    err = _error(capsys, ["run", "--datasets", str(task / "task"), "--model", TINY, "--methods", "zs,tip,tip-imo",
                          "--out", str(tmp_path / "o")])
    assert err == "clipimo run: error: methods tip-imo need an IMO adapter (--adapter FILE)"
    err = _error(capsys, ["shift", "--root", str(tmp_path), "--methods", "tip-imo", "--model", TINY,
                          "--out", str(tmp_path / "s")])
    assert err == "clipimo shift: error: methods tip-imo need an IMO adapter (--adapter FILE)"

