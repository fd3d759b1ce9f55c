import csv
import io
import json
import re

import numpy as np
import pytest
from conftest import TINY, make_task

from clipimo.cli.app import main
from clipimo.errors import ClipimoError


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"))


def _args(task, out, *extra):
    return ["run", "--datasets", str(task / "task"), "--model", TINY, "--adapter", str(task / "adapter.safetensors"),
            "--shots", "1,2", "--seeds", "1,2", "--augment-passes", "2", "--out", str(out),
            "--cache-dir", str(task / "cache"), "--workers", "0", "--no-progress", *extra]


def test_run_writes_tables_and_resumes(task, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(_args(task, out)) == 0
    printed = capsys.readouterr()
    assert printed.err.count("RANDOM-INIT") == 1 and "RANDOM-INIT" not in printed.out
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 4 and results["meta"]["random_init"] is True
    assert results["meta"]["source"] == {"model": TINY, "pretrained": None,
                                         "adapter": str((task / "adapter.safetensors").resolve())}
    for cell in results["cells"]:
        assert set(cell["methods"]) == {"zs", "tip", "tip-imo", "tipx", "tipx-imo"}
        assert cell["validation"]["protocol"] == "full" and not cell["validation"]["tuned_on_test"]
        assert set(cell["methods"]["tipx-imo"]["hparams"]) == {"alpha", "beta", "gamma"}
        val = {m: r["val_acc"] for m, r in cell["methods"].items()}
        # the grids contain zero-shot (alpha = 0) and Tip (gamma = 0): the searched val cannot be lower
        assert val["zs"] <= val["tip"] <= val["tipx"] and val["zs"] <= val["tip-imo"] <= val["tipx-imo"]
    zs = {(c["shots"], c["seed"]): c["methods"]["zs"]["test_acc"] for c in results["cells"]}
    assert len(set(zs.values())) == 1  # zero-shot ignores the support set
    md = (out / "results.md").read_text()
    assert "RANDOM-INIT" in md and "### 2 shots" in md and " ± " in md
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 4 * 5
    assert len(list((out / "supports").glob("*.json"))) == 4
    # a log file shows each cell start and finish, with its time; stdout ends with the summary table
    started = re.findall(r"^cell (\d)/4: (\S+) started$", printed.err, re.MULTILINE)
    assert [int(i) for i, _ in started] == [1, 2, 3, 4]
    assert sorted(n for _, n in started) == sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert len(re.findall(r"^cell \d/4: \S+ finished in [\d.]+s \(elapsed .*, ETA .*\)$", printed.err, re.MULTILINE)) == 4
    zs_1shot = np.mean([c["methods"]["zs"]["test_acc"] for c in results["cells"] if c["shots"] == 1])
    assert "### 1 shot" in printed.out and f"{zs_1shot:.2f}" in printed.out

    # resume: finished cells are skipped; a lost cell is recomputed from cached features only
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    lost = sorted(stamp)[0]
    (out / "cells" / lost).unlink()
    assert main(_args(task, out)) == 0
    assert len(re.findall(r"^cell \d/4: \S+ reused \(stored, up to date\)", capsys.readouterr().err, re.MULTILINE)) == 3
    now = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert {k for k in stamp if now[k] != stamp[k]} == {lost}
    again = json.loads((out / "results.json").read_text())
    assert [c["methods"] for c in again["cells"]] == [c["methods"] for c in results["cells"]]


def test_run_refuses_mixed_configuration_and_missing_adapter(task, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(_args(task, out, "--methods", "zs,tip")) == 0
    assert main(_args(task, out, "--methods", "zs,tip", "--augment-passes", "3")) == 2
    assert "another configuration (differs in: augment_passes)" in capsys.readouterr().err
    with pytest.raises(ClipimoError, match="need an IMO adapter"):
        args = [a for a in _args(task, tmp_path / "b") if a not in ("--adapter", str(task / "adapter.safetensors"))]
        main(["--traceback", *args])


def test_yaml_config_and_test_tuning_flag(task, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"datasets: [{task / 'task'}]\nshots: [1]\nseeds: [3]\nmethods: zs,tip\nvalidation: test\nmodel: {TINY}\n")
    base = ["run", "--config", str(cfg), "--out", str(tmp_path / "r"), "--cache-dir", str(task / "cache"), "--workers", "0", "--no-progress"]
    assert main(base) == 2  # test tuning needs the explicit flag
    assert main(base + ["--allow-test-tuning"]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["meta"]["tuned_on_test"] is True
    assert "TUNED ON THE TEST SPLIT" in (tmp_path / "r" / "results.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [x]\nshotz: [1]\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2


def test_saved_cell_features_carry_provenance_and_evaluate_warns(task, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(_args(task, out, "--shots", "1", "--seeds", "1", "--methods", "zs,tip,tip-imo,gda,gda-imo",
                      "--save-features")) == 0
    npz = next((out / "features").glob("*.npz"))
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["cache_views"].shape == arrays["cache_views_corrected"].shape == (2, 3, 64)  # 2 passes x 3 shots
    assert json.loads(str(arrays["meta"]))["precision"] == "fp32"
    capsys.readouterr()
    assert main(["evaluate", "--features", str(npz), "--methods", "zs,tip,gda,gda-imo",
                 "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("RANDOM-INIT") == 1 and "RANDOM-INIT" not in printed.out
    cell = json.loads(next((out / "cells").glob("*.json")).read_text())
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert all(evaluated[m] == cell["methods"][m] for m in ("tip", "gda", "gda-imo"))
    np.savez(tmp_path / "no_views.npz", **{k: v for k, v in arrays.items() if not k.startswith("cache_views")})
    assert main(["evaluate", "--features", str(tmp_path / "no_views.npz"), "--methods", "gda,gda-imo"]) == 2
    assert "gda fits on every augmented view" in capsys.readouterr().err


def test_skip_unreadable_is_recorded(task, tmp_path):
    import shutil

    copy = tmp_path / "task"
    shutil.copytree(task / "task", copy)
    broken = copy / "test" / "red" / "broken.png"
    broken.write_bytes(b"not an image")
    args = [a if a != str(task / "task") else str(copy) for a in _args(task, tmp_path / "r", "--shots", "1", "--seeds", "1",
                                                                     "--methods", "zs")]
    assert main(args) == 2
    assert main(args + ["--skip-unreadable"]) == 0
    cell = json.loads(next((tmp_path / "r" / "cells").glob("*.json")).read_text())
    assert cell["validation"]["skipped_unreadable"] == {"test": [str(broken)]}


def test_yaml_booleans_are_parsed(task, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"datasets: [{task / 'task'}]\nshots: [1]\nseeds: [1]\nmethods: zs\nvalidation: test\n"
                   f"allow_test_tuning: 'false'\nmodel: {TINY}\n")
    base = ["run", "--config", str(cfg), "--out", str(tmp_path / "r"), "--cache-dir", str(task / "cache"),
            "--workers", "0", "--no-progress"]
    assert main(base) == 2  # the string 'false' must not count as permission


# ---- issue 11: a result is never silently wrong ------------------------------------------------

def _copy_task(task, dest):
    import shutil

    shutil.copytree(task / "task", dest)
    return dest


def _small(task, out, datasets, *extra):
    args = _args(task, out, "--shots", "1", "--seeds", "1", "--methods", "zs,tip", "--augment-passes", "1", *extra)
    return [str(datasets) if a == str(task / "task") else a for a in args]


def test_two_tasks_with_one_folder_name_get_their_own_cells(task, tmp_path):
    a = _copy_task(task, tmp_path / "a" / "task")
    b = _copy_task(task, tmp_path / "b" / "task")
    for path in sorted((b / "test").rglob("*.png"))[::2]:
        path.unlink()  # b/task: other test images
    assert main(_small(task, tmp_path / "both", f"{a},{b}")) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert len(both["cells"]) == 2 and len({c["dataset"] for c in both["cells"]}) == 2
    assert all(c["dataset"].startswith("task-") for c in both["cells"])  # the hash tells the two apart
    for path in (a, b):  # each cell equals that task evaluated alone, labelled by its folder name alone
        assert main(_small(task, tmp_path / f"alone_{path.parent.name}", path)) == 0  # not beside the task
        alone = json.loads((tmp_path / f"alone_{path.parent.name}" / "results.json").read_text())["cells"][0]
        assert alone["dataset"] == "task"
        match = [c for c in both["cells"] if c["source"] == alone["source"]]
        assert match and match[0]["methods"] == alone["methods"]
        assert match[0]["fingerprint"]["dataset"]["location"] == str(path)


def test_custom_task_labels_change_without_losing_stored_cells(task, tmp_path, capsys):
    """A task is `task` alone, `task-<hash>` once another folder called task joins the results folder;
    a stored cell is found by its source, shots and seed under either name (and renamed), not recomputed.
    This also resumes folders whose cells an earlier clipimo stored under hashed labels."""
    a = _copy_task(task, tmp_path / "a" / "task")
    b = _copy_task(task, tmp_path / "b" / "task")
    out = tmp_path / "res"
    assert main(_small(task, out, a)) == 0
    first = json.loads((out / "cells" / "task_k1_s1.json").read_text())
    capsys.readouterr()
    assert main(_small(task, out, b)) == 0
    err = capsys.readouterr().err
    names = sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert len(names) == 2 and all(n.startswith("task-") and n.endswith("_k1_s1") for n in names)
    assert re.search(r"^cell \d/2: task-\w+_k1_s1 reused \(stored, up to date\)", err, re.MULTILINE)
    moved = next(json.loads((out / "cells" / f"{n}.json").read_text()) for n in names
                 if json.loads((out / "cells" / f"{n}.json").read_text())["source"] == str(a))
    assert moved["methods"] == first["methods"] and moved["dataset"] != "task"
    assert {c["dataset"] for c in json.loads((out / "results.json").read_text())["cells"]} == set(
        n.removesuffix("_k1_s1") for n in names)


def test_stale_cells_are_recomputed_and_results_cover_the_folder(task, tmp_path, capsys):
    data = _copy_task(task, tmp_path / "task")
    out = tmp_path / "res"
    assert main(_small(task, out, data)) == 0
    # another shot count into the same folder adds to the results; 8 shots > 4 train images per class
    assert main(_small(task, out, data, "--shots", "8")) == 0
    err = capsys.readouterr().err
    assert "WARNING: task_k8_s1" in err and ("_k8_s1: 3 class(es) have fewer than 8 support images encoded (too few "
                                             "train images, or unreadable ones left out), so fewer shots: "
                                             "blue (4), green (4), red (4)") in err
    results = json.loads((out / "results.json").read_text())
    assert [(c["shots"], c["actual_shots"]["min"]) for c in results["cells"]] == [(1, 1), (8, 4)]
    assert results["meta"]["shots"] == [1, 8]
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert sorted((r["shots"], r["min_shots_per_class"]) for r in rows) == [("1", "1"), ("1", "1"), ("8", "4"), ("8", "4")]
    md = (out / "results.md").read_text()
    assert "fewer train images than k" in md and "| task †" in md and " † |" in md

    # a rerun with nothing changed reuses both cells silently
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert main(_small(task, out, data)) == 0
    assert "recomputing" not in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamp

    # deleting test images makes both cells stale (also the 8-shot one this run did not ask for)
    for path in sorted((data / "test").rglob("*.png"))[::3]:
        path.unlink()
    assert main(_small(task, out, data)) == 0
    err = capsys.readouterr().err
    assert err.count("recomputing, its stored result is stale (changed: dataset.test, test images)") == 2
    again = json.loads((out / "results.json").read_text())
    assert all(c["fingerprint"]["test"] != o["fingerprint"]["test"] for c, o in zip(again["cells"], results["cells"]))

    # a damaged cell file is an error naming it, not a traceback
    cell = next((out / "cells").glob("*_k1_s1.json"))
    cell.write_text('{"dataset": ')
    assert main(_small(task, out, data)) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: cell file {cell} is not valid JSON: "
                                                    "Expecting value: line 1 column 13 (char 12)")


def test_cells_of_an_older_feature_format_are_recomputed(task, tmp_path, capsys):
    """A cell whose features were computed another way (e.g. crops seeded by path, format 3) is not
    reused by a clipimo that computes them differently."""
    from clipimo.features.extractor import FEATURE_FORMAT_VERSION

    data = _copy_task(task, tmp_path / "task")
    out = tmp_path / "res"
    assert main(_small(task, out, data)) == 0
    path = out / "cells" / "task_k1_s1.json"
    cell = json.loads(path.read_text())
    assert cell["fingerprint"]["run"]["feature_format"] == FEATURE_FORMAT_VERSION
    cell["fingerprint"]["run"]["feature_format"] = FEATURE_FORMAT_VERSION - 1
    path.write_text(json.dumps(cell))
    capsys.readouterr()
    assert main(_small(task, out, data)) == 0
    assert "task_k1_s1: recomputing, its stored result is stale (changed: feature_format)" in capsys.readouterr().err
    assert json.loads(path.read_text())["fingerprint"]["run"]["feature_format"] == FEATURE_FORMAT_VERSION


def test_second_run_on_one_folder_fails_at_once(task, tmp_path, capsys):
    import os
    import socket

    out = tmp_path / "res"
    out.mkdir()
    (out / ".clipimo.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "t"}))
    assert main(_small(task, out, task / "task")) == 2
    assert (f"error: {out} is in use by another clipimo run (process {os.getpid()} on {socket.gethostname()}, "
            "since t)") in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".clipimo.lock"]  # nothing written


def test_environment_errors_are_one_message_with_nothing_written(task, tmp_path, capsys, monkeypatch):
    import torch

    bad_yaml = tmp_path / "run.yaml"
    bad_yaml.write_bytes(b"datasets: [caf\xe9]\n")
    assert main(["run", "--config", str(bad_yaml), "--out", str(tmp_path / "y")]) == 2
    assert f"config file {bad_yaml}, line 1: not UTF-8 text (byte 0xe9)" in capsys.readouterr().err
    if not torch.cuda.is_available():
        out = tmp_path / "cuda"
        assert main(_small(task, out, task / "task", "--device", "cuda")) == 2
        assert capsys.readouterr().err.strip().endswith("error: --device cuda: CUDA is not available on this machine "
                                                        "(use --device cpu)")
        assert not out.exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("clipimo.experiment.grid.run_experiment", interrupted)
    try:
        rc = main(_small(task, tmp_path / "i", task / "task"))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")
    assert rc == 130
    err = capsys.readouterr().err  # the random-init banner may come first; then one line, no traceback
    assert err.endswith("\ninterrupted; rerun the same command to resume\n") and "Traceback" not in err
