"""One settings system and one vocabulary of flags for every command (issue 12, items 2 and 3).

Expected values are written out here by hand (the defaults as documented in the README), not read
from the code under test.
"""
import argparse
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, make_task

from clipimo.cli.app import _leaf_parsers, build_parser, main
from clipimo.cli.config import ListAction
from clipimo.features.file import feature_arrays, synthetic_features


def printed_config(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([*argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out)


# ---- --config / --print-config -------------------------------------------------------------------

def test_precedence_defaults_then_yaml_then_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: [Caltech101]\nshots: [2, 4]\nseeds: [7]\nbatch-size: 8\naugment_passes: 3\n"
                   "out: from_yaml\nallow_test_tuning: 'yes'\n")
    got = printed_config(capsys, "run", "--config", str(cfg), "--seeds", "9", "--batch-size", "16")
    assert got["dataset"] == ["Caltech101"]           # YAML (the old 'datasets' key still works)
    assert got["shots"] == [2, 4] and got["augment_passes"] == 3 and got["allow_test_tuning"] is True  # YAML
    assert got["seeds"] == [9] and got["batch_size"] == 16   # flags beat the YAML file
    assert got["methods"] == ["zs", "tip", "tip-imo", "tipx", "tipx-imo"]  # defaults
    assert got["device"] == "auto" and got["precision"] == "fp32" and got["imagepca"] == "abtt-2"
    assert got["out"] == str(tmp_path / "from_yaml") and got["root"] == str(tmp_path)  # required --out from YAML; absolute


def test_scalars_become_lists_and_values_take_the_options_types(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: EuroSAT\nseeds: 1\nshots: '1, 8'\nmethods: zs,tip\ncorrections: isoclip\n"
                   "augment_passes: '5'\nworkers: 0\nvalidation: null\nout: o\n")
    got = printed_config(capsys, "run", "--config", str(cfg))
    assert got["dataset"] == ["EuroSAT"] and got["seeds"] == [1] and got["shots"] == [1, 8]
    assert got["methods"] == ["zs", "tip"] and got["corrections"] == ["isoclip"]
    assert got["augment_passes"] == 5 and got["workers"] == 0 and got["validation"] is None
    dino = tmp_path / "d.yaml"
    dino.write_text("method: dino\nglobal_crops_scale: [0.3, 0.9]\nlocal_crops_number: 4\nnorm_last_layer: off\n")
    got = printed_config(capsys, "train", "dino", "--config", str(dino))
    assert got["global_crops_scale"] == [0.3, 0.9] and got["local_crops_number"] == 4
    assert got["norm_last_layer"] is False and got["epochs"] == 10  # the DINO default


def test_repeatable_and_comma_dataset_with_the_old_spelling():
    args = build_parser().parse_args(["run", "--dataset", "a,b", "--datasets", "c", "--dataset", "d", "--out", "o"])
    assert args.dataset == ["a", "b", "c", "d"]
    args = build_parser().parse_args(["datasets", "check", "--root", "r", "--dataset", "EuroSAT,DTD"])
    assert args.dataset == ["EuroSAT", "DTD"]
    args = build_parser().parse_args(["run", "--dataset", "x", "--out", "o", "--shots", "4"])
    assert args.shots == [4]  # the first use replaces the default 1,2,4,8,16


@pytest.mark.parametrize("text, expected", [
    ("shotz: [1]\n", r"unknown key 'shotz' for `clipimo run` \(did you mean shots\?\)"),
    ("methods: [zs, tipp]\n", r"methods: invalid choice\(s\) tipp"),
    ("validation: everything\n", r"validation: invalid choice 'everything'"),
    ("augment_passes: many\n", r"augment_passes: invalid literal for int"),
    ("seeds: {a: 1}\n", r"seeds: invalid value"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, capsys, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("datasets: [x]\n" + text)
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clipimo run: error: config file {cfg}: ")
    assert re.search(expected, err), err
    assert not (tmp_path / "o").exists()


def test_train_config_of_another_method_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: dino\nepochs: 2\n")
    assert main(["train", "supervised", "--config", str(cfg), "--print-config"]) == 2
    assert "method is 'dino', but this command is `clipimo train supervised`" in capsys.readouterr().err


def usage_error(argv) -> None:
    """argparse's usage error: exit 2 before any work."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_required_options_may_come_from_the_file_but_must_come(tmp_path, capsys):
    usage_error(["run", "--dataset", "x"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: o\n")
    usage_error(["overlap", "--config", str(cfg)])
    assert "one of the arguments --features --dataset --images is required" in capsys.readouterr().err
    cfg.write_text("images: imgs\nout: o\n")  # a flag of an exclusive group overrides the file's member
    got = printed_config(capsys, "overlap", "--config", str(cfg), "--features", "f.npz")
    assert got["images"] is None and got["features"] == os.path.abspath("f.npz")
    cfg.write_text(f"runs: [{tmp_path}]\nout: t.csv\n")  # a positional from the file
    got = printed_config(capsys, "results", "merge", "--config", str(cfg))
    assert got["runs"] == [str(tmp_path)]


def test_print_config_round_trip_from_another_folder(tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    (here / "my_task").mkdir(parents=True)
    monkeypatch.chdir(here)
    argv = ["run", "--dataset", "my_task,Caltech101", "--shots", "1,2", "--seeds", "3", "--out", "runs/x",
            "--cache-dir", "cache", "--templates", "t.txt", "--workers", "0"]
    first = printed_config(capsys, *argv)
    assert first["dataset"] == [str(here / "my_task"), "Caltech101"]  # a folder absolute, a benchmark name kept
    assert first["out"] == str(here / "runs/x") and first["cache_dir"] == str(here / "cache")
    assert first["templates"] == str(here / "t.txt") and first["model"] == "ViT-B-16"
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(first))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert printed_config(capsys, "run", "--config", str(saved)) == first
    monkeypatch.chdir(here)  # train: the settings its run folder's config.yaml records, paths absolute
    train = printed_config(capsys, "train", "supervised", "--data", "pool.csv", "--out", "runs/t", "--epochs", "2")
    assert train["method"] == "supervised" and train["data"] == str(here / "pool.csv")
    assert train["out"] == str(here / "runs/t") and train["epochs"] == 2 and train["lr"] == 8e-3
    saved.write_text(yaml.safe_dump(train))
    monkeypatch.chdir(elsewhere)
    assert printed_config(capsys, "train", "supervised", "--config", str(saved)) == train


def test_run_saves_its_config_and_resumes_from_it_anywhere(tmp_path, capsys, monkeypatch):
    task = make_task(tmp_path / "made")
    monkeypatch.chdir(task)
    argv = ["run", "--dataset", "task", "--model", TINY, "--adapter", "adapter.safetensors", "--shots", "1",
            "--seeds", "1", "--methods", "zs,tip-imo", "--augment-passes", "2", "--out", "res", "--cache-dir", "cache",
            "--workers", "0"]
    assert main(argv) == 0
    saved = yaml.safe_load((task / "res" / "config.yaml").read_text())
    assert saved["dataset"] == [str(task / "task")] and saved["out"] == str(task / "res")
    assert saved["adapter"] == str(task / "adapter.safetensors") and saved["root"] == str(task)
    assert saved["methods"] == ["zs", "tip-imo"] and saved["augment_passes"] == 2
    cell = next((task / "res" / "cells").glob("*.json"))
    before = cell.read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", str(task / "res" / "config.yaml")]) == 0  # resumes: the same configuration
    assert cell.read_text() == before  # the finished cell was kept, not recomputed
    capsys.readouterr()
    assert main(["run", "--config", str(task / "res" / "config.yaml"), "--augment-passes", "3"]) == 2
    assert "another configuration (differs in: augment_passes)" in capsys.readouterr().err


# ---- --json - and --device -------------------------------------------------------------------------

def _features_file(tmp_path):
    arrays = feature_arrays(synthetic_features(num_classes=4, shots=2, n_val=12, n_test=12, dim=16))
    path = tmp_path / "f.npz"
    meta = {"random_init": True, "backbone": {"model": "m", "weights": "w", "random_init": True}}
    np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
    return path


def test_json_dash_puts_only_the_json_on_stdout(tmp_path, capsys):
    path = _features_file(tmp_path)
    assert main(["evaluate", "--features", str(path), "--methods", "zs,tip", "--json", "-"]) == 0
    printed = capsys.readouterr()
    results = json.loads(printed.out)  # the whole of stdout is one JSON document
    assert set(results) == {"zs", "tip"} and 0 <= results["tip"]["test_acc"] <= 100
    assert "test" in printed.err and "RANDOM-INIT" in printed.err  # the table and the banner went to stderr
    assert main(["evaluate", "--features", str(path), "--methods", "zs", "--json", str(tmp_path / "r.json")]) == 0
    assert set(json.loads((tmp_path / "r.json").read_text())) == {"zs"}
    assert capsys.readouterr().out.splitlines()[1].startswith("zs ")  # with a file, the table is on stdout


@pytest.mark.parametrize("argv", [
    ["evaluate", "--features", "{f}"],
    ["features", "--images", "{d}/list.csv", "--out", "{d}/o.npz", "--model", TINY],
])
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, argv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "list.csv").write_text("path,label\nnot_read.png,a\n")  # the device fails first
    argv = [a.format(f=_features_file(tmp_path), d=tmp_path / "imgs") for a in argv]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("error: --device cuda: CUDA is not available on this machine (use --device cpu)\n")
    assert err.count("\n") == 1 or (err.count("\n") == 2 and err.startswith("WARNING: RANDOM-INIT"))


# ---- the same names everywhere: a walk over every command ------------------------------------------

BACKBONE_COMMANDS = {"demo", "features", "run", "shift", "overlap", "predict", "train supervised", "train dino"}
ENCODING_COMMANDS = BACKBONE_COMMANDS - {"demo"}  # demo's precision is the paper's fp32
DATASET_COMMANDS = {"run", "overlap", "datasets check"}
JSON_COMMANDS = {"evaluate", "datasets check", "datasets openimages"}


def leaves() -> dict[str, argparse.ArgumentParser]:
    return {leaf.prog.split(" ", 1)[1]: leaf for leaf in _leaf_parsers(build_parser())}


def test_every_option_is_documented_once_without_markup():
    for name, leaf in leaves().items():
        formatter = leaf._get_formatter()
        for action in leaf._actions:
            if action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action) if action.help else ""
            where = f"clipimo {name} {'/'.join(action.option_strings) or action.dest}"
            assert text.strip(), f"{where}: no help"
            stated = re.findall(r"\(default|default:|default is|defaults to", text)
            assert len(stated) <= 1, f"{where}: default stated twice: {text!r}"
            assert not re.search(r"`|\*\*|§|METHOD\.md|\.md §", text), f"{where}: markup or a private file: {text!r}"
        for text in (leaf.description or "", leaf.epilog or ""):
            assert not re.search(r"`|\*\*|§|METHOD\.md", text), f"clipimo {name}: {text!r}"


def test_shared_flags_have_one_name_and_one_meaning():
    found = leaves()
    assert {"run", "evaluate", "train dino", "datasets check", "adapter push"} <= set(found)
    for name, leaf in found.items():
        opts = leaf._option_string_actions
        for flag in ("--config", "--print-config", "--progress", "--no-progress", "-q", "-v"):
            assert flag in opts, f"clipimo {name} lacks {flag}"
        assert opts["--progress"] is opts["--no-progress"], name
        if "--device" in opts:
            assert opts["--device"].default == "auto" and opts["--device"].choices is None, name
        if "--precision" in opts:
            assert tuple(opts["--precision"].choices) == ("fp32", "bf16") and opts["--precision"].default == "fp32"
        if "--json" in opts:
            assert opts["--json"].metavar == "OUT" and "'-': stdout" in opts["--json"].help, name
        if "--datasets" in opts or "--dataset" in opts:
            assert isinstance(opts["--dataset"], ListAction) and opts["--datasets"].help == argparse.SUPPRESS, name
        if "--no-progress" in opts and name.startswith("train"):
            continue
        assert opts["--progress"].default in (argparse.SUPPRESS, None), name
    for name in BACKBONE_COMMANDS | {"evaluate"}:
        assert "--device" in found[name]._option_string_actions, name
    for name in ENCODING_COMMANDS:
        assert "--precision" in found[name]._option_string_actions, name
    for name in DATASET_COMMANDS:
        assert "--dataset" in found[name]._option_string_actions, name
    for name in JSON_COMMANDS:
        assert "--json" in found[name]._option_string_actions, name
    for name, leaf in found.items():
        dests = {a.dest for a in leaf._actions}
        assert not dests & {"no_progress", "datasets", "train_method"}, name  # the old names are gone
    out_flags = {n for n, leaf in found.items() if "--out" in leaf._option_string_actions}
    assert {"run", "features", "overlap", "shift", "report", "demo", "predict", "train dino"} <= out_flags


def readme_commands() -> list[list[str]]:
    """The argument lists of every clipimo command in the README's code blocks (shell variables
    such as $M expanded as the README defines them, redirections dropped)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    variables = dict(re.findall(r'^(\w+)="([^"]*)"', text, re.M))
    commands = []
    for block in re.findall(r"```(?:bash|text)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), line.split(" #")[0])
            for part in line.split("&&"):
                words = shlex.split(part.split(">")[0])
                names = [i for i, w in enumerate(words) if w == "clipimo" or w.endswith("/clipimo")]
                if names and not part.lstrip().startswith("#"):
                    commands.append(words[names[0] + 1:])
    return commands


def test_readme_commands_parse_and_document_the_config_flags(capsys):
    commands = readme_commands()
    assert len(commands) >= 20 and ["demo"] in commands
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: clipimo {' '.join(argv)}\n{capsys.readouterr().err}")
    assert any("--print-config" in argv for argv in commands) and any("--config" in argv for argv in commands)
