import json

from conftest import assert_figure, assert_png

from clipimo.cli.app import main
from clipimo.experiment.demo import POOL_PHOTOS, TASK_PHOTOS, TASK_SPLITS, build_demo_data
from clipimo.report.style import slug


def test_demo_data_is_deterministic_and_disjoint(tmp_path):
    a = build_demo_data(tmp_path / "a", seed=3)
    build_demo_data(tmp_path / "b", seed=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert len(files_a) == len(TASK_PHOTOS) * sum(TASK_SPLITS.values()) + len(POOL_PHOTOS) * 24
    for rel in files_a[:5]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert not set(TASK_PHOTOS.values()) & set(POOL_PHOTOS.values())
    assert sorted(p.name for p in (a["task"] / "train").iterdir()) == sorted(TASK_PHOTOS)
    assert a["pool"].read_text().splitlines()[0] == "path,label"


def test_quick_demo_writes_report_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress", "--format", "png,pdf", "--dpi", "100"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("WARNING: RANDOM-INIT BACKBONE") == 1 and "RANDOM-INIT" not in printed.out
    report = (out / "report" / "report.md").read_text()
    assert "RANDOM-INIT BACKBONE" in report
    for method in ("zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"):
        assert f"| {method} " in report or f" {method} |" in report
    linked = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert any("overlap" in p for p in linked) and any("acc_" in p for p in linked)
    for rel in linked:
        assert_png(out / "report" / rel, 300, 200)
    results = json.loads((out / "results" / "results.json").read_text())
    assert results["meta"]["random_init"] is True and len(results["cells"]) == 2
    overlap = json.loads((out / "overlap" / "overlap.json").read_text())
    assert 0 <= overlap["original"]["overlap"] <= 1 and 0 <= overlap["corrected"]["overlap"] <= 1
    assert (out / "train" / "adapter.safetensors").is_file()
    assert_figure({f: out / "overlap" / f"overlap.{f}" for f in ("png", "pdf")}, ("png", "pdf"), 100)
    gain = out / "report" / "plots" / f"gain_{slug(results['cells'][0]['dataset'])}"  # custom tasks: <folder>-<hash>
    assert_figure({f: gain.with_suffix(f".{f}") for f in ("png", "pdf")}, ("png", "pdf"), 100)
    cell = results["cells"][0]["methods"]["tipx-imo"]
    assert cell["test_top5"] >= cell["test_acc"] and 0 <= cell["test_mean_per_class_recall"] <= 100


def test_demo_pipeline_on_a_tiny_siglip_style_model(tmp_path):
    """Adapter training, the grid, overlap and report on a timm tower with a sigmoid-style logit bias."""
    import numpy as np
    import torch

    from clipimo import load_clip
    from clipimo.experiment.demo import DemoSettings, run_demo
    from clipimo.features.file import load_features

    out = tmp_path / "demo"
    settings = DemoSettings(shots=(2,), seeds=(1,), augment_passes=1, train_epochs=1)
    report = run_demo(out, model="clipimo-tiny-sigmoid", settings=settings, progress=False)
    assert "RANDOM-INIT BACKBONE" in report.read_text()
    results = json.loads((out / "results" / "results.json").read_text())
    assert results["meta"]["backbone"]["model"] == "clipimo-tiny-sigmoid" and len(results["cells"]) == 1
    from clipimo.model.adapter import read_adapter_file

    _, meta = read_adapter_file(out / "train" / "adapter.safetensors")
    assert meta["config"]["tower"] == "timm"
    feats = load_features(next((out / "results" / "features").glob("*.npz")))
    model = load_clip("clipimo-tiny-sigmoid").model
    assert feats.logit_scale == np.float32(torch.exp(model.logit_scale.detach()).item()) and feats.logit_bias == -10.0
