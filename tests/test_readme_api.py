"""The README's Python API block runs as written, on the tiny random-init model, and the README
lists every dataset name and alias the registry accepts.

The block is parsed from README.md; the only changes: the model becomes the tiny test model,
``pretrained="openai"`` becomes random init with ``workers=0`` and ``device="cuda"`` becomes CPU. The
files it names (my_task/, adapter.safetensors, ~/data/eurosat, runs/eval/results.json,
classifier.safetensors, a.jpg, b.jpg) are made first, ~ being a temporary home.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_images, make_task
from PIL import Image

from clipimo.cli.app import main
from clipimo.data.registry import _SPECS, get_spec
from clipimo.features.file import load_features

README = Path(__file__).resolve().parent.parent / "README.md"


def api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def for_tiny_model(code: str) -> str:
    swaps = {'model="ViT-B-16"': f'model="{TINY}"', '"ViT-B-16", "openai"': f'"{TINY}", None, workers=0',
             'pretrained="openai"': "pretrained=None, workers=0", 'device="cuda"': 'device="cpu"'}
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    assert "ViT-B-16" not in code and "openai" not in code and "cuda" not in code
    return code


def make_eurosat(root: Path, per_split: dict[str, int]) -> int:
    """A fake EuroSAT in the split_zhou layout: ``per_split[split]`` coloured images per class."""
    spec = get_spec("EuroSAT")
    base = root / spec.dirnames[0]
    split = {}
    for s, n in per_split.items():
        split[s] = []
        for label in range(spec.num_classes):
            for i in range(n):
                rel = f"class_{label}/{s}_{i}.png"
                (base / spec.image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((24, 24, 3), (25 * label, 200 - 15 * label, 40 * i), np.uint8)).save(
                    base / spec.image_dir / rel)
                split[s].append([rel, label, f"class {label}"])
    (base / spec.split_files[0]).write_text(json.dumps(split))
    return spec.num_classes


def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    made = make_task(tmp_path / "made")
    shutil.copytree(made / "task", tmp_path / "my_task")
    shutil.copy(made / "adapter.safetensors", tmp_path / "adapter.safetensors")
    n_classes = make_eurosat(tmp_path / "home" / "data", {"train": 4, "val": 1, "test": 1})
    for name, item in zip(("a.jpg", "b.jpg"), make_images(tmp_path / "imgs", 2, seed=3)):
        Image.open(item.path).convert("RGB").save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIPIMO_CACHE", str(tmp_path / "cache"))
    tiny = ["--model", TINY, "--workers", "0", "--adapter", "adapter.safetensors"]
    assert main(["run", "--dataset", "my_task", "--shots", "1", "--seeds", "1,2", "--methods", "zs,tip",
                 "--out", "runs/eval", *tiny]) == 0
    assert main(["features", "--task", "my_task", "--shots", "2", "--seed", "1", "--out", "f.npz", *tiny]) == 0
    assert main(["evaluate", "--features", "f.npz", "--methods", "tip-imo",
                 "--save-classifier", "classifier.safetensors"]) == 0
    capsys.readouterr()

    namespace: dict = {}
    exec(compile(for_tiny_model(api_block()), "README.md", "exec"), namespace)

    res = namespace["res"]
    assert set(res) == {"zs", "tip", "tip-imo"}
    for r in res.values():
        assert 0 <= r["test_acc"] <= 100 and 0 <= r["val_acc"] <= 100
    assert set(res["tip-imo"]["hparams"]) == {"alpha", "beta"}
    saved = load_features("eurosat_k4_s1.npz")
    assert saved.num_classes == n_classes and len(saved.cache_labels) == 4 * n_classes
    rows = namespace["rows"]
    assert sorted((r["seed"], r["method"]) for r in rows) == [(1, "tip"), (1, "zs"), (2, "tip"), (2, "zs")]
    preds = namespace["preds"]
    assert [Path(p["path"]).name for p in preds] == ["a.jpg", "b.jpg"]
    for p in preds:
        probs = [k["probability"] for k in p["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert {k["label"] for k in p["top_k"]} == {"red", "green", "blue"}
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # 3 classes: the top 3 is every class


def test_readme_lists_every_dataset_name_and_alias():
    text = README.read_text()
    listing = text[text.index("Benchmarks, by name or alias"):text.index("Examples of the expected layout")]
    words = set(re.findall(r"[\w-]+", listing))
    missing = [n for spec in _SPECS for n in (spec.name, *spec.aliases) if n not in words]
    assert not missing
