import json

import numpy as np
import pytest

from clipimo.cli import main
from clipimo.errors import ClipimoError

from conftest import TINY, make_task


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
    for cell in results["cells"]:
        assert set(cell["methods"]) == {"zs", "tip", "tip-imo", "tipx", "tipx-imo"}
        assert cell["validation"]["protocol"] == "full" and not cell["validation"]["tuned_on_test"]
        assert set(cell["methods"]["tipx-imo"]["hparams"]) == {"alpha", "beta", "gamma"}
        assert 0 <= cell["methods"]["tip"]["test_acc"] <= 100
    zs = {(c["shots"], c["seed"]): c["methods"]["zs"]["test_acc"] for c in results["cells"]}
    assert len(set(zs.values())) == 1  # zero-shot ignores the support set
    md = (out / "results.md").read_text()
    assert "RANDOM-INIT" in md and "### 2 shots" in md and " ± " in md
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 4 * 5
    assert len(list((out / "supports").glob("*.json"))) == 4

    # resume: finished cells are skipped; a lost cell is recomputed from cached features only
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    lost = sorted(stamp)[0]
    (out / "cells" / lost).unlink()
    assert main(_args(task, out)) == 0
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
