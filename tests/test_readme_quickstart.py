"""The README's quickstart block runs as written, on the tiny random-init model.

The block is parsed from README.md; the only changes: ``--model`` becomes the tiny test model,
``--pretrained`` is dropped (random init: no weights exist here) and commands that read images get
``--workers 0``. The files it names (my_task/, adapter.safetensors, new_images/) are made first.
"""
import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import TINY, make_images, make_task

from clipimo.cli.app import main
from clipimo.features.file import load_features

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_commands() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def for_tiny_model(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--model":
            out += ["--model", TINY]
        elif argv[i] == "--pretrained":
            pass
        else:
            out.append(argv[i])
            i += 1
            continue
        i += 2
    return out + (["--workers", "0"] if out[1] in ("features", "predict", "overlap") else [])


def test_readme_quickstart_runs_end_to_end(tmp_path, monkeypatch, capsys):
    made = make_task(tmp_path / "made")
    shutil.copytree(made / "task", tmp_path / "my_task")
    shutil.copy(made / "adapter.safetensors", tmp_path / "adapter.safetensors")
    new = make_images(tmp_path / "new_images", 4, seed=5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPIMO_CACHE", str(tmp_path / "cache"))

    commands = quickstart_commands()
    assert [c[:2] for c in commands] == [["clipimo", "features"], ["clipimo", "evaluate"], ["clipimo", "evaluate"],
                                         ["clipimo", "predict"], ["clipimo", "overlap"]]
    for argv in commands:
        assert main(for_tiny_model(argv)[1:]) == 0, argv
        assert "RANDOM-INIT" not in capsys.readouterr().out

    feats = load_features("task.npz")
    assert feats.num_classes == 3 and len(feats.cache_labels) == 3 * 4  # 4 shots x 3 classes
    assert set(json.loads(Path("results.json").read_text())) == {"zs", "tip", "tip-imo", "tipx", "tipx-imo"}
    with open("predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(Path(it.path).name for it in new)
    for row in rows:
        probs = [float(row[f"probability_{k}"]) for k in (1, 2, 3)]
        assert {row[f"label_{k}"] for k in (1, 2, 3)} == {"red", "green", "blue"}
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert json.loads(Path("ov/overlap.json").read_text())["n_items"] == 9
