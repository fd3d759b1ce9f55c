"""Every method option of ``clipimo run`` is part of a cell's fingerprint: a stored cell run with
another value is recomputed (never reported stale), and the log names the option that changed.

The options are read from the code, not listed here: every field of ``MethodOptions`` but the two
each cell sets itself (its seed and its dataset, fingerprinted as the cell's own), each with the
``run`` flag of the same name. A new option without a flag fails
``test_every_method_option_is_a_run_flag``; with one, it is a new case of the parametrised test.
The task is a stand-in (features written out in test_stream_wiring_runs), so a run takes seconds.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
from test_stream_wiring_runs import StandInExtractor, put_task

from clipimo.cli.app import build_parser, main
from clipimo.cli.config import all_parsers
from clipimo.methods.common import MethodOptions
from clipimo.methods.registry import TAKES_OPTIONS

CELL_LEVEL = {"seed", "dataset"}  # set per cell: a new seed or dataset is another cell, not a stale one
# How a changed value shows in the settings when not as given (TDA names the official row it used).
SHOWN_AS = {"tda_config": "official:dtd"}
# The methods that take options (their -imo twins read the same ones).
METHODS = sorted(m for m in TAKES_OPTIONS if not m.endswith("-imo"))


def _run_parser():
    return next(p for p in all_parsers(build_parser()) if p.prog.split()[-1] == "run")


def _option_actions() -> list:
    """The run flags that set a MethodOptions field, in the parser's order."""
    names = {f.name for f in dataclasses.fields(MethodOptions)} - CELL_LEVEL
    return [a for a in _run_parser()._actions if a.dest in names]


def _changed(action) -> object:
    """A valid value other than the default: another choice (the last), or 3 for a count."""
    if action.dest == "tda_config":  # default, official or a file: the task is named after DTD, which has a row
        return "official"
    if action.choices:
        return [c for c in action.choices if c != action.default][-1]
    if action.type is int:
        return 3
    pytest.fail(f"{action.option_strings[0]}: say here which other value it takes")


OPTIONS = [pytest.param(a, id=a.option_strings[0]) for a in _option_actions()]


def test_every_method_option_is_a_run_flag():
    fields = {f.name for f in dataclasses.fields(MethodOptions)}
    assert {a.dest for a in _option_actions()} == fields - CELL_LEVEL
    assert {"--tipf-batch", "--tipf-config", "--ape-config", "--proker-grid", "--proker-views", "--clap-batch",
            "--tda-config"} <= \
        {a.option_strings[0] for a in _option_actions()}


class CliStandIn(StandInExtractor):
    env = SimpleNamespace(distributed=False, is_main=True)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """One run at the defaults, on a task named after a benchmark with official configurations
    (so every "official" value is valid)."""
    root = tmp_path_factory.mktemp("option_run")
    task = put_task(root / "dtd")
    args = ["run", "--datasets", str(task), "--shots", "2", "--seeds", "1", "--methods", ",".join(METHODS),
            "--augment-passes", "2", "--workers", "0", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("clipimo.cli.commands.run.make_extractor", lambda *a, **k: CliStandIn())
        assert main([*args, "--out", str(root / "out")]) == 0
    return args, root / "out"


@pytest.mark.parametrize("action", OPTIONS)
def test_a_changed_method_option_recomputes_the_cell_and_names_itself(stored_run, action, tmp_path, capsys,
                                                                        monkeypatch):
    args, stored = stored_run
    out = tmp_path / "out"
    shutil.copytree(stored, out)
    monkeypatch.setattr("clipimo.cli.commands.run.make_extractor", lambda *a, **k: CliStandIn())
    (path,) = (out / "cells").glob("*.json")
    before = json.loads(path.read_text())
    flag, value = action.option_strings[0], _changed(action)

    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0  # the same values: reused, silently
    assert "recomputing" not in capsys.readouterr().err and json.loads(path.read_text()) == before

    assert main([*args, "--out", str(out), flag, str(value)]) == 0
    err = capsys.readouterr().err
    assert f"recomputing, its stored result is stale (changed: method_options.{action.dest})" in err
    after = json.loads(path.read_text())
    # the methods ran again with the new value: it shows in the settings they report
    assert after["settings"] != before["settings"]
    shown = SHOWN_AS.get(action.dest, value)
    assert any(shown in s.values() for s in after["settings"].values()), after["settings"]


def test_fingerprint_changes_name_each_differing_part():
    """The names the log gives, worked out by hand for each kind of part."""
    from clipimo.experiment.fingerprint import fingerprint_changes

    old = {"run": {"precision": "fp32", "method_options": {"tipf_batch": 256, "ape_config": "default"}},
           "dataset": {"name": "x", "test": "a"}, "shots": 1, "support": "s1", "only_old": 1}
    assert fingerprint_changes(old, old) == []
    assert fingerprint_changes(None, old) == ["no fingerprint stored (written by an older clipimo)"]
    new = {"run": {"precision": "bf16", "method_options": {"tipf_batch": 4, "ape_config": "default", "extra": 1}},
           "dataset": {"name": "x", "test": "b", "classes": 3}, "shots": 2, "support": "s2", "only_new": 1}
    assert fingerprint_changes(old, new) == [
        "dataset.classes", "dataset.test", "only_new", "only_old", "method_options.extra",
        "method_options.tipf_batch", "precision", "shots", "support set"]
    # a part that is not a mapping on one side is named as a whole
    assert fingerprint_changes({**old, "run": None, "dataset": "d"}, old) == ["dataset", "run"]
    assert fingerprint_changes(old, {**old, "run": {**old["run"], "method_options": None}}) == ["method_options"]
