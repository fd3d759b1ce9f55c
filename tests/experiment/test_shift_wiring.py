"""``clipimo shift`` scores each target with the ImageNet cache and hyper-parameters, corrected
features in the image-image term, original ones in the text term, and -A/-R logits restricted to
the target's classes: checked against a hand computation on a small ImageNet (the reader takes
any class count) with a random adapter, on targets where each mistake changes the accuracy."""
from __future__ import annotations

import dataclasses
import json

import imo_reference as ref
import numpy as np
import pytest
from conftest import TINY

from clipimo import FeatureExtractor, load_clip
from clipimo.cli.app import main
from clipimo.experiment.grid import RunConfig, run_experiment

CLASSES = 6
SUBSET_A = [4, 1, 5]  # ImageNet indices of the -A / -R class folders (labels follow ImageNet order)
SUBSET_R = [0, 3]
METHODS = ["zs", "tip", "tip-imo"]


@pytest.fixture(scope="module")
def small_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_imagenet")
    wnids = [f"n{i:08d}" for i in range(CLASSES)]
    base = root / "imagenet"
    base.mkdir()
    (base / "classnames.txt").write_text("".join(f"{w} thing {i}\n" for i, w in enumerate(wnids)))
    for c, w in enumerate(wnids):
        ref.class_images(base / "images" / "train" / w, 3, c, seed=1)
        ref.class_images(base / "images" / "val" / w, 2, c, seed=2)
    targets = {"ImageNetA": ("imagenet-adversarial/imagenet-a", SUBSET_A),
               "ImageNetR": ("imagenet-rendition/imagenet-r", SUBSET_R)}
    for name, (folder, subset) in targets.items():
        for c in subset:
            ref.class_images(root / folder / wnids[c], 8, c, seed=3, noise=110.0)
    ref.random_adapter_file(TINY, root / "adapter.safetensors", seed=5, std=1.0, scale=1.0)
    return root


@pytest.fixture()
def small_specs(monkeypatch):
    """The registry expects 1,000 ImageNet classes and 200 for -A/-R; these sets are smaller."""
    from clipimo.data import registry

    sizes = {"ImageNet": CLASSES, "ImageNetA": len(SUBSET_A), "ImageNetR": len(SUBSET_R)}
    for key, spec in list(registry._LOOKUP.items()):
        if spec.name in sizes:
            monkeypatch.setitem(registry._LOOKUP, key, dataclasses.replace(spec, num_classes=sizes[spec.name]))


def _cfg(root):
    return RunConfig(root=str(root), datasets=["ImageNet"], shots=[1], seeds=[1], methods=METHODS, augment_passes=2)


def _extractor(root, cache):
    return FeatureExtractor(load_clip(TINY), adapter=root / "adapter.safetensors", cache_dir=cache, num_workers=0,
                            progress=False)


def test_shift_targets_equal_a_hand_computation(small_imagenet, small_specs, tmp_path):
    root = small_imagenet
    out = tmp_path / "shift"
    assert main(["shift", "--root", str(root), "--targets", "ImageNetA,ImageNetR", "--shots", "1", "--seeds", "1",
                 "--methods", ",".join(METHODS), "--augment-passes", "2", "--model", TINY,
                 "--adapter", str(root / "adapter.safetensors"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"]) == 0
    result = json.loads((out / "shift.json").read_text())
    # The source cell through the runner's own path: its saved features and its results.
    run_experiment(_cfg(root), _extractor(root, tmp_path / "cache"), tmp_path / "run", progress=False,
                   save_features=True)
    cell = json.loads((tmp_path / "run" / "cells" / "ImageNet_k1_s1.json").read_text())
    with np.load(tmp_path / "run" / "features" / "ImageNet_k1_s1.npz") as z:
        source = {k: z[k] for k in z.files if k != "meta"}
    rows = {(r["target"], r["method"]): r for r in result["per_seed"]}
    for m in METHODS:
        assert rows[("ImageNet", m)]["test_acc"] == cell["methods"][m]["test_acc"]
        assert rows[("ImageNet", m)]["hparams"] == cell["methods"][m]["hparams"]
    assert cell["methods"]["tip-imo"]["hparams"]["alpha"] > 0  # the cache term weighs

    for target, folder, subset in (("ImageNetA", "imagenet-adversarial/imagenet-a", SUBSET_A),
                                   ("ImageNetR", "imagenet-rendition/imagenet-r", SUBSET_R)):
        classes = sorted(subset)
        paths = sorted(str(p) for p in (root / folder).rglob("*.png"))
        labels = np.array([classes.index(int(p.split("img_")[1].split("_")[0])) for p in paths])
        original, corrected = ref.encode_streams(TINY, str(root / "adapter.safetensors"), paths)
        task = {**source, "test_feats": original, "test_feats_corrected": corrected}
        for m in METHODS:
            hp = cell["methods"][m]["hparams"]
            logits = ref.zeroshot(task, "test") if m == "zs" else \
                ref.fixed_point(task, "test", ref.Wiring.imo() if m.endswith("-imo") else ref.Wiring(), False, hp)
            want = ref.percent(ref.hits(logits[:, classes], labels), len(labels))
            assert rows[(target, m)]["test_acc"] == pytest.approx(want), (target, m)

    # Power: on these targets the restriction, and the stream of the cache term, change the result.
    def acc(target_paths, classes, wiring, restrict=True):
        labels = np.array([classes.index(int(p.split("img_")[1].split("_")[0])) for p in target_paths])
        original, corrected = ref.encode_streams(TINY, str(root / "adapter.safetensors"), target_paths)
        task = {**source, "test_feats": original, "test_feats_corrected": corrected}
        logits = ref.fixed_point(task, "test", wiring, False, cell["methods"]["tip-imo"]["hparams"])
        logits = logits[:, classes] if restrict else logits
        return ref.percent(ref.hits(logits, labels), len(labels))

    targets = [(sorted(str(p) for p in (root / folder).rglob("*.png")), sorted(subset))
               for folder, subset in (("imagenet-adversarial/imagenet-a", SUBSET_A),
                                      ("imagenet-rendition/imagenet-r", SUBSET_R))]
    right = [acc(paths, classes, ref.Wiring.imo()) for paths, classes in targets]
    assert right != [acc(paths, classes, ref.Wiring.imo(), restrict=False) for paths, classes in targets]
    for wrong in ref.Wiring.imo().wrong_variants()[:2]:  # Z on corrected / A on original features
        assert right != [acc(paths, classes, wrong) for paths, classes in targets], wrong


# The official TDA rows of the targets (positive alpha, beta), as its released configs give them.
OFFICIAL_TDA = {"ImageNetA": (2.0, 5.0), "ImageNetR": (1.0, 8.0)}


@pytest.mark.parametrize("config", ["default", "official"])
def test_tda_adapts_on_each_targets_own_stream(small_imagenet, small_specs, tmp_path, config):
    """TDA carries nothing over from ImageNet: on each target it replays that target's own test
    stream (in the order its images are listed, shuffled by the seed) with the text weights of the
    target's classes only and (``--tda-config official``) the target's own configuration, as the
    sequential hand replay computes. Classifying over all classes instead gives another answer on
    these targets."""
    from types import SimpleNamespace

    from clipimo.data import load_dataset
    from clipimo.methods.official import TdaConfig

    root, seed = small_imagenet, 2
    out = tmp_path / "shift"
    assert main(["shift", "--root", str(root), "--targets", "ImageNetA,ImageNetR", "--shots", "1", "--seeds", str(seed),
                 "--methods", "zs,tda,tda-imo", "--augment-passes", "1", "--model", TINY, "--tda-config", config,
                 "--adapter", str(root / "adapter.safetensors"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"]) == 0
    result = json.loads((out / "shift.json").read_text())
    rows = {(r["target"], r["method"]): r["test_acc"] for r in result["per_seed"]}

    def expected(target):  # (positive alpha, beta) TDA must use on the target
        return OFFICIAL_TDA[target] if config == "official" else (2.0, 5.0)

    for r in result["per_seed"]:
        if r["target"] in OFFICIAL_TDA and r["method"].startswith("tda"):
            used = (r["settings"]["pos_alpha"], r["settings"]["pos_beta"])
            assert used == expected(r["target"]), r
    assert "TDA adapts on each target's own test stream" in (out / "shift.md").read_text()
    cfg = dataclasses.replace(_cfg(root), methods=["zs"], seeds=[seed], augment_passes=1)
    run_experiment(cfg, _extractor(root, tmp_path / "cache"), tmp_path / "run", progress=False, save_features=True)
    with np.load(tmp_path / "run" / "features" / f"ImageNet_k1_s{seed}.npz") as z:
        text = z["text_weights"]

    def accuracy(feats, corrected, target):
        alpha, beta = expected(target)
        logits, _, labels = ref.tda_stream(feats, corrected, TdaConfig(pos_alpha=alpha, pos_beta=beta), seed)
        return 100.0 * float(np.mean(logits.argmax(1) == labels))

    unrestricted = []
    for target, subset in (("ImageNetA", SUBSET_A), ("ImageNetR", SUBSET_R)):
        items = load_dataset(target, root).test  # the stream's order before the seeded shuffle
        labels = np.array([label for _, label in items])
        original, corrected = (a.astype(np.float32) for a in ref.encode_streams(
            TINY, str(root / "adapter.safetensors"), [path for path, _ in items]))
        feats = SimpleNamespace(text_weights=text[:, sorted(subset)], test_feats=original,
                                test_feats_corrected=corrected, test_labels=labels)
        for method, imo in (("tda", False), ("tda-imo", True)):
            assert rows[(target, method)] == pytest.approx(accuracy(feats, imo, target)), (target, method)
        whole = SimpleNamespace(text_weights=text, test_feats=original, test_feats_corrected=corrected,
                                test_labels=np.array(sorted(subset))[labels])
        unrestricted.append(accuracy(whole, False, target))
    assert unrestricted != [rows[(t, "tda")] for t in ("ImageNetA", "ImageNetR")]


def test_a_bad_tda_config_fails_before_any_model_loads(small_imagenet, small_specs, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was checked")

    monkeypatch.setattr("clipimo.model.backbone.load_clip", refuse)
    missing, out = tmp_path / "none.yaml", tmp_path / "shift"
    assert main(["shift", "--root", str(small_imagenet), "--targets", "ImageNetR", "--shots", "1", "--seeds", "1",
                 "--methods", "zs,tda", "--model", TINY, "--tda-config", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--tda-config {missing}: not default, official or an existing YAML file") and "\n" not in err
    assert not out.exists()
