"""The -imo streams through the paths that carry features between the methods and the user: a saved
classifier (``clipimo predict``), the corrections' slot, and the ProKeR / APE / Tip-F variants.
Each expectation is hand-written (``imo_reference`` or written out here) on a task where the
corrected and the original stream give different answers, so a swapped stream changes the number."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import imo_reference as ref
from clipimo.classifier import Classifier, load_classifier

POINT = {"alpha": 3.0, "beta": 4.0, "gamma": 7.0}
META = {"backbone": {"model": "tiny"}, "adapter": {"sha256": "ab" * 32}}


@pytest.fixture(scope="module")
def task():
    """The contrast task with two augmentation passes per cache image (each stream's views scatter
    around its key) and a zero-shot scale and bias other than CLIP's 100 and 0."""
    task = ref.contrast_task(seed=1)
    rng = np.random.default_rng(2)
    for key in ("cache_keys", "cache_keys_corrected"):
        noise = rng.standard_normal((2, *task[key].shape)) * 0.15
        task[key.replace("keys", "views")] = ref.unit(task[key][None] + noise)
    return {**task, "logit_scale": np.array(30.0), "logit_bias": np.array(-0.5)}


def _hp(base: str) -> dict:
    return {"gda": {"alpha": POINT["alpha"]}, "tip": {k: POINT[k] for k in ("alpha", "beta")},
            "proker": {"beta": 2.0, "lmbda": 0.3}}.get(base, POINT)


def proker_logits(task, split, hp, kernel_corrected=True, residual_corrected=False, z_corrected=False):
    """ProKeR by its definition (METHODS_BEYOND.md §1): every view of the support, unscaled
    zero-shot ``Z0 = x W``, ``alpha = (K_SS / lmbda + I)^-1 (Y - Z0(S))``, ``Z0(x) + k(x, S) alpha``."""
    w = task["text_weights"].astype(np.float64)
    s, sk = (np.concatenate(list(task["cache_views_corrected" if c else "cache_views"].astype(np.float64)))
             for c in (residual_corrected, kernel_corrected))
    y = np.eye(w.shape[1])[np.tile(task["cache_labels"], len(task["cache_views"]))]
    k_ss = np.exp(-hp["beta"] * (1 - sk @ sk.T))
    alpha = np.linalg.solve(k_ss / hp["lmbda"] + np.eye(len(s)), y - s @ w)
    x, xk = ref.feats(task, split, z_corrected), ref.feats(task, split, kernel_corrected)
    return x @ w + np.exp(-hp["beta"] * (1 - xk @ sk.T)) @ alpha


def _want(task, method, wiring):
    base = method.removesuffix("-imo")
    if base == "gda":
        return ref.gda_logits(task, "test", wiring, _hp(base)["alpha"])
    return ref.fixed_point(task, "test", wiring, base == "tipx", _hp(base))


def _classify(task, method, tmp_path):
    """Save a classifier of ``method`` at its point, load it, classify the test split in one call
    (float64 queries: the classifier casts them to its own float32)."""
    path = tmp_path / "clf.safetensors"
    Classifier.from_features(ref.as_featureset(task), method, _hp(method.removesuffix("-imo")),
                             {**META, "classnames": list("abcd")}).save(path)
    clf = load_classifier(path)
    original = torch.from_numpy(task["test_feats"]).double()
    out = clf.logits(original, torch.from_numpy(task["test_feats_corrected"]).double())
    assert out.dtype == torch.float32
    if not method.endswith("-imo"):  # the corrected stream defaults to the original one
        torch.testing.assert_close(clf.logits(original), out)
    return out.double().numpy()


@pytest.mark.parametrize("method", ["tip-imo", "tipx-imo", "gda-imo", "tip", "tipx", "gda"])
def test_saved_classifier_takes_each_term_from_the_right_stream(task, tmp_path, method):
    """The logits are the reference's (Tip-X rescales over the images classified together), and
    every wrong choice of stream would give others."""
    got = _classify(task, method, tmp_path)
    right = ref.Wiring.imo() if method.endswith("-imo") else ref.Wiring.original()
    want = _want(task, method, right)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    kl_terms = method.startswith("tipx")
    for wrong in right.wrong_variants():
        if kl_terms or (wrong.kl, wrong.range) == (right.kl, right.range):
            assert np.abs(_want(task, method, wrong) - want).max() > 0.05, wrong


@pytest.mark.parametrize("method", ["proker-imo", "proker"])
def test_saved_proker_classifier_uses_corrected_views_only_in_the_kernel(task, tmp_path, method):
    got = _classify(task, method, tmp_path)
    imo = method.endswith("-imo")
    want = proker_logits(task, "test", _hp("proker"), kernel_corrected=imo)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    for wrong in ({"kernel_corrected": not imo}, {"kernel_corrected": imo, "residual_corrected": True},
                  {"kernel_corrected": imo, "z_corrected": True}):
        assert np.abs(proker_logits(task, "test", _hp("proker"), **wrong) - want).max() > 0.05, wrong


# ---- the runner's cells and saved features, and shift, with a stand-in extractor -----------------
# Each image's features are a function of its path, label and pass, written below: the original
# stream points weakly at its class's text direction, the corrected one at the NEXT class's but
# with a strong class cluster (as ``imo_reference.contrast_task``), so every swap changes a result.

DIM, NUM_CLASSES = 16, 4
TEXT = np.eye(DIM, dtype=np.float32)[:, :NUM_CLASSES]
CENTRES = ref.unit(np.concatenate([np.zeros((NUM_CLASSES, NUM_CLASSES)),
                                   np.random.default_rng(0).standard_normal((NUM_CLASSES, DIM - NUM_CLASSES))], 1))
SCALE_BIAS = (30.0, -0.5)  # not CLIP's (100, 0): a swapped or dropped scale or bias changes Z


def raw_pair(path: str, seed: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised (original, corrected) features of one image in pass ``p`` (-1: eval transform);
    its class is the number ending its folder's name (``class2``, ``n00000002``), whatever the
    label a split gives it (a shift set's labels index its own class subset). Shift sets' images
    (under ``imagenet-*`` folders) carry a weaker class cluster: a shifted distribution."""
    import hashlib
    import re
    from pathlib import Path

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
        from types import SimpleNamespace
        from pathlib import Path

        self.backbone = SimpleNamespace(identity={"model": "stand-in", "weights": "none", "random_init": False},
                                        random_init=False, logit_scale_bias=SCALE_BIAS)
        self.adapter_hash, self.adapter_path, self.precision = "cd" * 32, Path("/stand-in/adapter.safetensors"), "fp32"
        self.calls: list[tuple[list, int, int]] = []

    def image_features(self, items, passes=0, seed=0, skip_unreadable=False, desc=""):
        from clipimo.features import ImageFeatures

        self.calls.append(([(it[0], int(it[1])) for it in items], passes, seed))
        f = {k: torch.from_numpy(v) for k, v in hand_streams(self.calls[-1][0], passes, seed).items()}
        return ImageFeatures(original=f["original"], corrected=f["corrected"], labels=f["labels"],
                             paths=[it[0] for it in items], views=f.get("views"),
                             views_corrected=f.get("views_corrected"))

    def text_weights(self, classnames, templates):
        assert len(classnames) == NUM_CLASSES  # a shift target's text weights are never asked for
        return torch.from_numpy(TEXT)

    def lists(self, *folders, passes: int | None = None):
        """The first recorded (items, passes, seed) whose images lie under each of ``folders`` (and
        that had ``passes``, if given)."""
        return [next(c for c in self.calls if c[0] and all(p.startswith(str(f)) for p, _ in c[0])
                     and passes in (None, c[1])) for f in folders]


def hand_arrays(support, val, test) -> dict[str, np.ndarray]:
    """The §8 arrays of a cell, keyed by hand from the streams of its three image lists."""
    keys, v, t = hand_streams(*support), hand_streams(*val), hand_streams(*test)
    arrays = {"text_weights": TEXT, "logit_scale": np.array(SCALE_BIAS[0]), "logit_bias": np.array(SCALE_BIAS[1]),
              "cache_views": keys["views"], "cache_views_corrected": keys["views_corrected"]}
    for name, s in (("cache_keys", keys), ("val_feats", v), ("test_feats", t)):
        arrays[name], arrays[f"{name}_corrected"] = s["original"], s["corrected"]
    arrays["cache_labels"], arrays["val_labels"], arrays["test_labels"] = keys["labels"], v["labels"], t["labels"]
    return arrays


def put_task(root, counts=(("train", 4), ("val", 3), ("test", 5))):
    from conftest import put_image

    for split, n in counts:
        for c in range(NUM_CLASSES):
            for i in range(n):
                put_image(root / split / f"class{c}" / f"{i}.png")
    return root


RUN_METHODS = ["zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
BEYOND = ["proker-imo", "ape-imo", "tip-f-imo"]


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    from clipimo.runner import RunConfig, run_experiment

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
    from clipimo.methods import MethodOptions, Problem, run_method

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
    from clipimo.data import registry
    from conftest import put_image

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
    from clipimo.runner import RunConfig
    from clipimo.shift import run_shift

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
    from clipimo.data.generic import read_image_folder

    task = put_task(tmp_path / "task")
    split = {s: [(it.path, it.label) for it in read_image_folder(task / s)[0]] for s in ("train", "val", "test")}
    arrays = hand_arrays((split["train"], 2, 0), (split["val"], 0, 0), (split["test"], 0, 0))
    extractor = StandInExtractor()
    hp = _hp(method.removesuffix("-imo"))
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


# ---- the corrections' slot ---------------------------------------------------------------------


def test_a_correction_centres_maps_and_normalises_each_row():
    """``x~ = normalize((x - mean) A)``, written out; the mean is subtracted, not added."""
    from clipimo.corrections import LinearCorrection

    rng = np.random.default_rng(4)
    x = ref.unit(rng.standard_normal((2, 5, 6)))  # [E, N, D] views go through the same map
    mean, matrix = 0.3 * rng.standard_normal(6), rng.standard_normal((6, 6))
    want = (x.astype(np.float64) - mean) @ matrix
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    got = LinearCorrection("imagepca", matrix, mean).apply(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    added = (x + mean) @ matrix
    assert np.abs(added / np.linalg.norm(added, axis=-1, keepdims=True) - want).max() > 0.05


def test_a_correction_that_maps_a_feature_to_zero_is_one_clear_error():
    from clipimo.corrections import LinearCorrection
    from clipimo.errors import ClipimoError

    keep_two = LinearCorrection("textpca", np.diag([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ClipimoError, match="the textpca correction maps some features to zero"):
        keep_two.apply(np.array([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=np.float32))


@pytest.mark.parametrize("method", ["proker-imo", "proker"])
def test_proker_on_averaged_keys_and_a_class_without_support(task, method):
    """``--proker-views mean`` puts the corrected averaged keys in the kernel of the IMO variant, and
    the one-hot targets span every class even when the last one has no support image."""
    from clipimo.methods import MethodOptions, Problem
    from clipimo.methods.predict import logits_at

    classes = task["text_weights"].shape[1]
    keep = task["cache_labels"] != classes - 1
    sub = {**task, "cache_labels": task["cache_labels"][keep],
           **{k: task[k][keep] for k in ("cache_keys", "cache_keys_corrected")},
           **{k: task[k][:, keep] for k in ("cache_views", "cache_views_corrected")}}
    hp, imo = _hp("proker"), method.endswith("-imo")
    problem = Problem.from_features(ref.as_featureset(sub))
    got = torch.cat([lg for _, lg in logits_at(problem, problem.test, method, hp,
                                               options=MethodOptions(proker_views="mean"))]).numpy()
    # the averaged keys are the only "view"
    mean_task = {**sub, "cache_views": sub["cache_keys"][None], "cache_views_corrected": sub["cache_keys_corrected"][None]}
    want = proker_logits(mean_task, "test", hp, kernel_corrected=imo)
    assert want.shape == (len(sub["test_labels"]), classes)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(proker_logits(mean_task, "test", hp, kernel_corrected=not imo) - want).max() > 0.05


def ape_logits(task, split, hp, affinity_corrected):
    """Training-free APE at one point (METHODS_BEYOND.md §2), from its definitions: channels by
    ``-0.5 sim + 0.5 var`` with ``sim`` the mean of ``u[d] v[d]`` over every pair of vectors of
    different classes (a class: its text weight and its keys), enumerated; KL weights and ``Z``
    on original features; only the affinity ``f' K'^T`` on the chosen stream."""
    import itertools

    w, keys, labels = task["text_weights"].astype(np.float64), task["cache_keys"].astype(np.float64), task["cache_labels"]
    groups = [[w[:, c]] + [k for k, y in zip(keys, labels) if y == c] for c in range(w.shape[1])]
    pairs = [u * v for i, j in itertools.permutations(range(len(groups)), 2) for u in groups[i] for v in groups[j]]
    criterion = -0.5 * np.mean(pairs, axis=0) + 0.5 * w.var(axis=1, ddof=1)
    idx = np.argsort(-criterion)[:round(w.shape[0] * 700 / 1024)]

    def norm(x, axis=-1):
        return x / np.linalg.norm(x, axis=axis, keepdims=True)

    selected = norm(keys[:, idx])
    p = ref.softmax(selected @ norm(w[idx], axis=0))
    div = np.log2((1 + 1e-6) / (p[np.arange(len(labels)), labels] + 1e-6))
    aff_keys = norm(task["cache_keys_corrected"].astype(np.float64)[:, idx]) if affinity_corrected else selected
    query = norm(ref.feats(task, split, affinity_corrected)[:, idx])
    weights = ref.onehot(task) * np.exp(hp["gamma"] * div)[:, None]
    return ref.zeroshot(task, split) + hp["alpha"] * np.exp(-hp["beta"] * (1 - query @ aff_keys.T)) @ weights


@pytest.mark.parametrize("method", ["ape-imo", "ape"])
def test_ape_at_a_fixed_point_takes_only_the_affinity_from_the_corrected_stream(task, method):
    """``logits_at`` (shift's targets, predict) for APE against the written-out definition."""
    from clipimo.methods import Problem
    from clipimo.methods.predict import logits_at

    hp, imo = {"alpha": 3.0, "beta": 4.0, "gamma": 0.5}, method.endswith("-imo")
    problem = Problem.from_features(ref.as_featureset(task))
    got = torch.cat([lg for _, lg in logits_at(problem, problem.test, method, hp)]).double().numpy()
    want = ape_logits(task, "test", hp, affinity_corrected=imo)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.abs(ape_logits(task, "test", hp, affinity_corrected=not imo) - want).max() > 0.05


@pytest.mark.parametrize("corrected", [True, False])
def test_tipf_scores_each_epoch_on_val_with_the_variants_streams(task, corrected):
    """The epoch Tip-F keeps is the one with the most val hits of ``Z(f) + 1.17 exp(-(1 - q theta^T)) L``,
    ``q`` the corrected val queries for the IMO variant; counted over every chunk of queries."""
    from clipimo.methods import Problem, tipf

    problem = Problem.from_features(ref.as_featureset(task))
    keys = problem.keys(corrected)

    def hand(query_corrected):
        q = ref.feats(task, "val", query_corrected)
        logits = ref.zeroshot(task, "val") + 1.17 * np.exp(-(1 - q @ keys.double().numpy().T)) @ ref.onehot(task)
        return ref.hits(logits, task["val_labels"])

    assert tipf.val_hits(problem, keys, corrected, chunk_rows=7) == hand(corrected)
    assert hand(corrected) != hand(not corrected)
