"""Issue 22, item 5: what a run records stays true (shots encoded, YAML settings as flags, ~ paths)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY, make_task

from clipimo.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("facts"))


def test_actual_shots_count_the_support_images_encoded(task, tmp_path, capsys):
    copy = tmp_path / "task"
    shutil.copytree(task / "task", copy)
    for path in (copy / "train" / "red").iterdir():
        path.write_bytes(b"not an image")  # every red train image unreadable: no red support at all
    for path in sorted((copy / "train" / "green").iterdir())[:3]:
        path.write_bytes(b"not an image")  # one of the 4 green images left
    out = tmp_path / "r"
    assert main(["run", "--dataset", str(copy), "--model", TINY, "--shots", "4", "--seeds", "1", "--methods", "zs",
                 "--augment-passes", "1", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
                 "--skip-unreadable"]) == 0
    cell = json.loads(next((out / "cells").glob("*.json")).read_text())
    # counted by hand: 4 train images per class, k=4 takes them all: red 0 left, green 1, blue 4
    assert cell["actual_shots"] == {"min": 0, "max": 4, "short_classes": {"red": 0, "green": 1},
                                    "empty_classes": ["red"]}
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["fewer_shots_than_k"] == [f"{cell['dataset']} k=4"]
    err = capsys.readouterr().err
    assert "class(es) red have NO support image left" in err


@pytest.mark.parametrize("text, message", [
    ("seeds: 1.7\n", "config file {cfg}: seeds: invalid value 1.7"),
    ("shots: [1, 2.5]\n", "config file {cfg}: shots: invalid value [1, 2.5]"),
    ("seeds: [1]\nshots: [1]\nseeds: [2]\n", "config file {cfg}, line 5: key 'seeds' is given twice"),
])
def test_yaml_values_are_checked_like_flags(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: EuroSAT\nout: o\n" + text)
    assert main(["run", "--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(cfg=cfg) in err and "Traceback" not in err


def test_tilde_in_yaml_paths_expands_like_on_the_command_line(task, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"images: {task / 'task' / 'test'}\nout: ~/feats.npz\nmodel: {TINY}\ncache_dir: ~/cache\n")
    assert main(["features", "--config", str(cfg), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert f"out: {home / 'feats.npz'}" in printed and f"cache_dir: {home / 'cache'}" in printed
    assert main(["features", "--config", str(cfg), "--workers", "0"]) == 0
    assert (home / "feats.npz").is_file() and (home / "cache").is_dir()  # written where it was recorded
    assert not (tmp_path / "~").exists()
    assert len(np.load(home / "feats.npz")["labels"]) == 9
