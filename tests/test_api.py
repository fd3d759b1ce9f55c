"""The top-level Python API agrees with the command line; prompt files for custom tasks."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_task
from torch.nn import functional as F

import clipimo
from clipimo.cli.app import main
from clipimo.data.prompts import read_classnames, read_templates
from clipimo.errors import ClipimoError
from clipimo.features.file import read_meta, read_npz


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("api"))


def _options(task):
    return {"model": TINY, "adapter": str(task / "adapter.safetensors"), "cache_dir": str(task / "cache"),
            "workers": 0, "augment_passes": 2}


def test_evaluate_task_matches_clipimo_run_and_load_results_flattens(task, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--datasets", str(task / "task"), "--model", TINY, "--adapter", str(task / "adapter.safetensors"),
                 "--shots", "1,2", "--seeds", "1", "--methods", "zs,tip,tip-imo", "--augment-passes", "2",
                 "--cache-dir", str(task / "cache"), "--workers", "0", "--out", str(out)]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    for cell in cells:
        api = clipimo.evaluate_task(str(task / "task"), cell["shots"], cell["seed"], methods="zs,tip,tip-imo",
                                    **_options(task))
        assert api == cell["methods"]

    records = clipimo.load_results(out / "results.json")
    assert len(records) == 2 * 3
    assert all(not isinstance(v, (dict, list)) for r in records for v in r.values())  # flat: one DataFrame row each
    tip2 = next(r for r in records if r["shots"] == 2 and r["method"] == "tip-imo")
    cell2 = next(c for c in cells if c["shots"] == 2)["methods"]["tip-imo"]
    assert (tip2["test_acc"], tip2["val_acc"], tip2["alpha"], tip2["beta"]) == (
        cell2["test_acc"], cell2["val_acc"], cell2["hparams"]["alpha"], cell2["hparams"]["beta"])
    assert tip2["dataset"] == cells[0]["dataset"] and tip2["random_init"] is True and tip2["model"] == TINY

    (tmp_path / "eval.json").write_text(json.dumps(cells[0]["methods"]))
    assert [r["method"] for r in clipimo.load_results(tmp_path / "eval.json")] == ["zs", "tip", "tip-imo"]
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ClipimoError, match="junk.json: neither"):
        clipimo.load_results(tmp_path / "junk.json")


def test_templates_and_classnames_shape_the_text_weights_and_are_recorded(task, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("# prompts\na photo of {}.\na blurry photo of {}.\n")
    names = tmp_path / "names.txt"
    names.write_text("red: crimson square\nblue: navy square\n")
    out = tmp_path / "t.npz"
    assert main(["features", "--images", str(task / "task"), "--shots", "1", "--seed", "2", "--augment-passes", "1",
                 "--templates", str(templates), "--classnames", str(names), "--model", TINY,
                 "--cache-dir", str(task / "cache"), "--workers", "0", "--out", str(out)]) == 0
    arrays = read_npz(out)
    meta = read_meta(arrays, "test")
    readable = ["navy square", "green", "crimson square"]  # labels keep the folder order blue, green, red
    assert meta["classnames"] == readable and meta["templates"] == ["a photo of {}.", "a blurry photo of {}."]

    bb = clipimo.load_clip(TINY)
    with torch.inference_mode():
        cols = []
        for name in readable:
            emb = F.normalize(bb.model.encode_text(bb.tokenizer([f"a photo of {name}.", f"a blurry photo of {name}."])), dim=-1)
            cols.append(F.normalize(emb.mean(0), dim=0))
    np.testing.assert_allclose(arrays["text_weights"], torch.stack(cols, 1).numpy(), atol=1e-5)

    run_out = tmp_path / "run"
    assert main(["run", "--datasets", str(task / "task"), "--model", TINY, "--shots", "1", "--seeds", "1", "--methods",
                 "zs", "--augment-passes", "1", "--templates", str(templates), "--cache-dir", str(task / "cache"),
                 "--workers", "0", "--out", str(run_out)]) == 0
    results = json.loads((run_out / "results.json").read_text())
    assert results["meta"]["templates"] == meta["templates"] and results["meta"]["classnames"] is None
    assert json.loads((run_out / "run.json").read_text())["fingerprint"]["templates"] == meta["templates"]


def test_prompt_files_and_benchmarks_refuse_bad_input(task, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(ClipimoError, match=r"bad.txt: line\(s\) \[2\] need exactly one '\{\}'"):
        read_templates(bad)
    bad.write_text("red crimson\n")
    with pytest.raises(ClipimoError, match="line 1: expected 'folder_name: readable name'"):
        read_classnames(bad)
    bad.write_text("purple: violet\n")
    with pytest.raises(ClipimoError, match=r"names folder\(s\) \['purple'\] that no split has"):
        clipimo.task_features(str(task / "task"), 1, 1, classnames=bad, **_options(task))
    (tmp_path / "t.txt").write_text("a {}.\n")
    assert main(["run", "--datasets", "Caltech101", "--templates", str(tmp_path / "t.txt"), "--model", TINY, "--methods", "zs",
                 "--out", str(tmp_path / "r")]) == 2
    assert "apply to custom task folders" in capsys.readouterr().err
