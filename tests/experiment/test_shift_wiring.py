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
