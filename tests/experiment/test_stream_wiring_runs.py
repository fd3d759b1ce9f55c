"""The -imo streams through the runner (saved features and cells), ``clipimo shift`` and
``Classifier.predict``, with a stand-in extractor whose features are written out below, so the
expected arrays and results are computed by hand from the image lists, independently of how the
runner assembles them; every check comes with one showing that a wrong stream changes it."""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import imo_reference as ref
import numpy as np
import pytest
import torch
from conftest import put_image

from clipimo.data import registry
from clipimo.data.generic import read_image_folder
from clipimo.experiment.grid import RunConfig, run_experiment
from clipimo.experiment.shift import run_shift
from clipimo.features.extractor import ImageFeatures
from clipimo.methods.classifier import Classifier
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.registry import run_method

POINT = {"alpha": 3.0, "beta": 4.0, "gamma": 7.0}

# Each image's features are a function of its path and pass: the original stream points weakly at
# its class's text direction, the corrected one at the NEXT class's but with a strong class
# cluster (as ``imo_reference.contrast_task``), so every swap changes a result.

DIM, NUM_CLASSES = 16, 4
TEXT = np.eye(DIM, dtype=np.float32)[:, :NUM_CLASSES]
TEXT_NORMS = np.linspace(2.0, 3.0, NUM_CLASSES, dtype=np.float32)  # raw text-embedding norms
CENTRES = ref.unit(np.concatenate([np.zeros((NUM_CLASSES, NUM_CLASSES)),
                                   np.random.default_rng(0).standard_normal((NUM_CLASSES, DIM - NUM_CLASSES))], 1))
SCALE_BIAS = (30.0, -0.5)  # not CLIP's (100, 0): a swapped or dropped scale or bias changes Z


def raw_pair(path: str, seed: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised (original, corrected) features of one image in pass ``p`` (-1: eval transform);
    its class is the number ending its folder's name (``class2``, ``n00000002``), whatever the
    label a split gives it (a shift set's labels index its own class subset). Shift sets' images
    (under ``imagenet-*`` folders) carry a weaker class cluster: a shifted distribution."""
    label = int(re.search(r"(\d+)$", Path(path).parent.name).group(1))
    where = "/".join(Path(path).parts[-4:])  # not the temporary folder: the same features on every run
    digest = hashlib.sha256(f"{where}:{seed}:{p}".encode()).digest()
    noise = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(DIM) / np.sqrt(DIM)
    original = 0.2 * TEXT[:, label] + noise
    cluster = 0.4 if "/imagenet-" in path else 1.0
    corrected = 0.6 * TEXT[:, (label + 1) % NUM_CLASSES] + cluster * CENTRES[label] + 0.6 * noise
    return original, corrected


def hand_streams(items, passes: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """What an extractor returns, by the definition: per-pass views normalised, the feature the
    normalised sum of the unnormalised passes (the eval-transform feature without passes)."""
    per_pass = np.array([[raw_pair(path, seed, p) for path, _ in items] for p in range(passes)]) \
        if passes else np.array([[raw_pair(path, seed, -1) for path, _ in items]])  # [E, N, 2, D]
    out = {"original": ref.unit(per_pass[:, :, 0].sum(0)), "corrected": ref.unit(per_pass[:, :, 1].sum(0)),
           "labels": np.array([label for _, label in items], dtype=np.int64)}
    if passes:
        out["views"], out["views_corrected"] = ref.unit(per_pass[:, :, 0]), ref.unit(per_pass[:, :, 1])
    return out


class StandInExtractor:
    """The extractor interface the runner and shift use, with the features of ``hand_streams``;
    it records every image list it is asked for."""
    def __init__(self):
        self.backbone = SimpleNamespace(identity={"model": "stand-in", "weights": "none", "random_init": False},
                                        random_init=False, logit_scale_bias=SCALE_BIAS)
        self.adapter_hash, self.adapter_path, self.precision = "cd" * 32, Path("/stand-in/adapter.safetensors"), "fp32"
        self.source = {"model": "stand-in", "pretrained": None, "adapter": str(self.adapter_path)}
        self.calls: list[tuple[list, int, int]] = []

    def image_features(self, items, passes=0, seed=0, skip_unreadable=False, desc=""):
        self.calls.append(([(it[0], int(it[1])) for it in items], passes, seed))
        f = {k: torch.from_numpy(v) for k, v in hand_streams(self.calls[-1][0], passes, seed).items()}
        return ImageFeatures(original=f["original"], corrected=f["corrected"], labels=f["labels"],
                             paths=[it[0] for it in items], views=f.get("views"),
                             views_corrected=f.get("views_corrected"))

    def text_weights(self, classnames, templates):
        assert len(classnames) == NUM_CLASSES  # a shift target's text weights are never asked for
        return torch.from_numpy(TEXT)

    def text_features(self, classnames, templates):
        return {"text_weights": self.text_weights(classnames, templates), "text_norms": torch.from_numpy(TEXT_NORMS)}

    def lists(self, *folders, passes: int | None = None):
        """The first recorded (items, passes, seed) whose images lie under each of ``folders`` (and
        that had ``passes``, if given)."""
        return [next(c for c in self.calls if c[0] and all(p.startswith(str(f)) for p, _ in c[0])
                     and passes in (None, c[1])) for f in folders]


def hand_arrays(support, val, test) -> dict[str, np.ndarray]:
    """The features-file arrays of a cell, keyed by hand from the streams of its three image lists."""
    keys, v, t = hand_streams(*support), hand_streams(*val), hand_streams(*test)
    arrays = {"text_weights": TEXT, "text_norms": TEXT_NORMS, "logit_scale": np.array(SCALE_BIAS[0]), "logit_bias": np.array(SCALE_BIAS[1]),
              "cache_views": keys["views"], "cache_views_corrected": keys["views_corrected"]}
    for name, s in (("cache_keys", keys), ("val_feats", v), ("test_feats", t)):
        arrays[name], arrays[f"{name}_corrected"] = s["original"], s["corrected"]
    arrays["cache_labels"], arrays["val_labels"], arrays["test_labels"] = keys["labels"], v["labels"], t["labels"]
    return arrays


def put_task(root, counts=(("train", 4), ("val", 3), ("test", 5))):
    for split, n in counts:
        for c in range(NUM_CLASSES):
            for i in range(n):
                put_image(root / split / f"class{c}" / f"{i}.png")
    return root


RUN_METHODS = ["zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
BEYOND = ["proker-imo", "ape-imo", "tip-f-imo"]


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand_in_run")
    task = put_task(root / "task")
    extractor = StandInExtractor()
    cfg = RunConfig(root=str(root), datasets=[str(task)], shots=[2], seeds=[3], methods=RUN_METHODS + BEYOND,
                    augment_passes=2)
    results = run_experiment(cfg, extractor, root / "out", progress=False, save_features=True)
    support, val, test = extractor.lists(task / "train", task / "val", task / "test")
    assert (support[1], support[2], val[1], test[1]) == (2, 3, 0, 0)  # cfg's passes and the cell's seed
    with np.load(next((root / "out" / "features").glob("*.npz"))) as z:
        saved = {k: z[k] for k in z.files if k != "meta"}
    return hand_arrays(support, val, test), saved, results["cells"][0]


def test_runner_saves_each_stream_under_its_own_key(stand_in_run):
    want, saved, _ = stand_in_run
    assert sorted(saved) == sorted(want)
    for key, value in want.items():
        np.testing.assert_allclose(saved[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
    for key in ("cache_keys", "val_feats", "test_feats", "cache_views"):
        assert np.abs(want[key] - want[f"{key}_corrected"]).max() > 0.5  # the streams differ everywhere


@pytest.mark.parametrize("method", RUN_METHODS)
def test_runner_cells_equal_the_reference_on_the_hand_arrays(stand_in_run, method):
    want, _, cell = stand_in_run
    got = cell["methods"][method]
    assert {k: got[k] for k in ("test_acc", "val_acc", "hparams")} == ref.method(want, method)


def test_runner_cells_would_change_with_any_wrong_stream(stand_in_run):
    """Power of the check above on this task: each wrong term gives some -imo method another answer
    (the KL's range only rescales gamma's grid, so a search cannot tell it: test_imo_wiring fixes a point)."""
    want, _, cell = stand_in_run
    for wrong in ref.Wiring.imo().wrong_variants()[:3]:
        assert any(ref.method(want, m, wrong) != {k: cell["methods"][m][k] for k in ("test_acc", "val_acc", "hparams")}
                   for m in ("tip-imo", "tipx-imo", "gda-imo")), wrong


@pytest.mark.parametrize("method", BEYOND)
def test_runner_beyond_methods_see_the_hand_arrays(stand_in_run, method):
    """ProKeR, APE and Tip-F in a cell equal the same method on the hand-keyed arrays (their own
    streams are checked against written-out formulas in test_proker/test_ape/test_tipf and below)."""
    want, _, cell = stand_in_run
    feats = ref.as_featureset(want)
    got = run_method(method, Problem.from_features(feats), MethodOptions(seed=3, dataset="task"))
    assert cell["methods"][method]["test_acc"] == got.test_acc
    assert cell["methods"][method]["hparams"] == got.hparams
    swapped = ref.as_featureset({**want, "cache_keys": want["cache_keys_corrected"],
                                 "cache_keys_corrected": want["cache_keys"],
                                 "cache_views": want["cache_views_corrected"],
                                 "cache_views_corrected": want["cache_views"]})
    other = run_method(method, Problem.from_features(swapped), MethodOptions(seed=3, dataset="task"))
    assert (other.val_acc, other.test_acc, other.hparams) != (got.val_acc, got.test_acc, got.hparams)


SHIFT_METHODS = ["zs", "tip", "tip-imo", "tipx-imo", "gda-imo"]
TARGETS = {"ImageNetA": ("imagenet-adversarial/imagenet-a", [3, 1]), "ImageNetR": ("imagenet-rendition/imagenet-r", [0, 2])}


@pytest.fixture()
def stand_in_shift(tmp_path, monkeypatch):
    """A 4-class ImageNet and two targets on class subsets (the registry's sizes patched to match)."""
    wnids = [f"n{c:08d}" for c in range(NUM_CLASSES)]
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("".join(f"{w} thing {c}\n" for c, w in enumerate(wnids)))
    for split, n in (("train", 6), ("val", 4)):
        for w in wnids:
            for i in range(n):
                put_image(tmp_path / "imagenet" / "images" / split / w / f"{i}.png")
    for folder, subset in TARGETS.values():
        for c in subset:
            for i in range(8):
                put_image(tmp_path / folder / wnids[c] / f"{i}.png")
    sizes = {"ImageNet": NUM_CLASSES, **{name: len(subset) for name, (_, subset) in TARGETS.items()}}
    for key, spec in list(registry._LOOKUP.items()):
        if spec.name in sizes:
            monkeypatch.setitem(registry._LOOKUP, key, dataclasses.replace(spec, num_classes=sizes[spec.name]))
    return tmp_path


def _restricted_acc(source, target_items, classes, method, hp, wiring, restrict=True):
    """Accuracy (%) on a target: the source's cache, the target's features as queries, logits of
    the target's classes only (labels index ``classes``)."""
    t = hand_streams(target_items)
    task = {**source, "test_feats": t["original"], "test_feats_corrected": t["corrected"]}
    logits = ref.zeroshot(task, "test") if method == "zs" else _logits(task, method, wiring, hp)
    return ref.percent(ref.hits(logits[:, classes] if restrict else logits, t["labels"]), len(t["labels"]))


def _logits(task, method, wiring, hp):
    base = method.removesuffix("-imo")
    if base == "gda":
        return ref.gda_logits(task, "test", wiring, hp["alpha"])
    return ref.fixed_point(task, "test", wiring, base == "tipx", hp)


def test_shift_scores_targets_with_the_source_cache_on_the_right_streams(stand_in_shift, tmp_path):
    root = stand_in_shift
    extractor = StandInExtractor()
    cfg = RunConfig(root=str(root), datasets=["ImageNet"], shots=[2], seeds=[5], methods=SHIFT_METHODS,
                    augment_passes=2)
    result = run_shift(cfg, extractor, tmp_path / "shift", targets=list(TARGETS), progress=False)
    rows = {(r["target"], r["method"]): r for r in result["per_seed"]}
    images = root / "imagenet" / "images"
    # ImageNet's val set is drawn from its train images (without passes), its test split is images/val.
    (support,), (val,), (test,) = (extractor.lists(images / "train", passes=2), extractor.lists(images / "train", passes=0),
                                   extractor.lists(images / "val"))
    source = hand_arrays(support, val, test)
    tuned = {m: ref.method(source, m) for m in SHIFT_METHODS}
    for m in SHIFT_METHODS:
        assert (rows[("ImageNet", m)]["test_acc"], rows[("ImageNet", m)]["hparams"]) == \
            (tuned[m]["test_acc"], tuned[m]["hparams"]), m
    for name, (folder, subset) in TARGETS.items():
        (items, passes, _), = extractor.lists(root / folder)
        classes = sorted(subset)
        assert passes == 0 and [label for _, label in items] == \
            [classes.index(int(p.split("/n")[-1].split("/")[0])) for p, _ in items]
        for m in SHIFT_METHODS:
            wiring = ref.Wiring.imo() if m.endswith("-imo") else ref.Wiring.original()
            want = _restricted_acc(source, items, classes, m, tuned[m]["hparams"], wiring)
            assert rows[(name, m)]["test_acc"] == pytest.approx(want), (name, m)
    # Power: the class restriction, and the stream of each term, change some -imo method's scores.
    targets = [(extractor.lists(root / folder)[0][0], sorted(subset)) for folder, subset in TARGETS.values()]

    def scores(m, wiring, restrict=True):
        return [_restricted_acc(source, items, classes, m, tuned[m]["hparams"], wiring, restrict)
                for items, classes in targets]

    imo = ("tip-imo", "tipx-imo", "gda-imo")
    assert any(scores(m, ref.Wiring.imo()) != scores(m, ref.Wiring.imo(), restrict=False) for m in imo)
    for wrong in ref.Wiring.imo().wrong_variants()[:2]:  # Z on corrected, A on original: the query split's slots
        assert any(scores(m, ref.Wiring.imo()) != scores(m, wrong) for m in imo), wrong


@pytest.mark.parametrize("method", ["tip-imo", "tipx-imo"])
def test_predict_feeds_each_stream_of_the_new_images_to_its_slot(tmp_path, method):
    """``Classifier.predict`` (``clipimo predict``): probabilities are the softmax of the reference
    logits with the new images' original features in Z and corrected ones in A."""
    task = put_task(tmp_path / "task")
    split = {s: [(it.path, it.label) for it in read_image_folder(task / s)[0]] for s in ("train", "val", "test")}
    arrays = hand_arrays((split["train"], 2, 0), (split["val"], 0, 0), (split["test"], 0, 0))
    extractor = StandInExtractor()
    hp = {k: POINT[k] for k in (("alpha", "beta", "gamma") if method.startswith("tipx") else ("alpha", "beta"))}
    meta = {"backbone": extractor.backbone.identity, "adapter": {"sha256": extractor.adapter_hash},
            "classnames": [f"class{c}" for c in range(NUM_CLASSES)]}
    clf = Classifier.from_features(ref.as_featureset(arrays), method, hp, meta)
    paths = [p for p, _ in split["test"]]
    got = clf.predict(extractor, paths, top_k=NUM_CLASSES)
    assert [p["path"] for p in got] == paths
    probs = np.array([[dict((t["label"], t["probability"]) for t in p["top_k"])[name] for name in meta["classnames"]]
                      for p in got])

    def want(wiring):
        return ref.softmax(ref.fixed_point(arrays, "test", wiring, method.startswith("tipx"), hp))

    np.testing.assert_allclose(probs, want(ref.Wiring.imo()), atol=1e-5)
    for wrong in ref.Wiring.imo().wrong_variants()[:2]:
        assert np.abs(want(wrong) - want(ref.Wiring.imo())).max() > 0.01, wrong
