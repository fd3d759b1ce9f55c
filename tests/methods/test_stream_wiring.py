"""The -imo streams where they leave the registry's search: a saved classifier's logits, the
methods at a fixed point (what shift and predict use) for ProKeR, APE and Tip-F, and the
corrections' map. Each expectation is written out here or in ``imo_reference``, on a task where
the corrected and the original stream give different answers, so a swapped stream changes it.
The runner, shift and predict themselves: ``test_stream_wiring_runs``."""
from __future__ import annotations

import itertools

import imo_reference as ref
import numpy as np
import pytest
import torch

from clipimo.errors import ClipimoError
from clipimo.features.corrections import LinearCorrection
from clipimo.methods import tipf
from clipimo.methods.classifier import Classifier, load_classifier
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.predict import logits_at

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
    """ProKeR by its definition (docs/methods.md, "ProKeR"): every view of the support, unscaled
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


# ---- the corrections' slot ---------------------------------------------------------------------


def test_a_correction_centres_maps_and_normalises_each_row():
    """``x~ = normalize((x - mean) A)``, written out; the mean is subtracted, not added."""
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
    keep_two = LinearCorrection("textpca", np.diag([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ClipimoError, match="the textpca correction maps some features to zero"):
        keep_two.apply(np.array([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype=np.float32))


@pytest.mark.parametrize("method", ["proker-imo", "proker"])
def test_proker_on_averaged_keys_and_a_class_without_support(task, method):
    """``--proker-views mean`` puts the corrected averaged keys in the kernel of the IMO variant, and
    the one-hot targets span every class even when the last one has no support image."""
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
    """Training-free APE at one point, from its definitions: channels by
    ``-0.5 sim + 0.5 var`` with ``sim`` the mean of ``u[d] v[d]`` over every pair of vectors of
    different classes (a class: its text weight and its keys), enumerated; KL weights and ``Z``
    on original features; only the affinity ``f' K'^T`` on the chosen stream."""
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
    problem = Problem.from_features(ref.as_featureset(task))
    keys = problem.keys(corrected)

    def hand(query_corrected):
        q = ref.feats(task, "val", query_corrected)
        logits = ref.zeroshot(task, "val") + 1.17 * np.exp(-(1 - q @ keys.double().numpy().T)) @ ref.onehot(task)
        return ref.hits(logits, task["val_labels"])

    scorer = tipf.ValScorer(problem, corrected, keys.shape[0], chunk_rows=7)
    assert len(scorer.parts) > 1
    assert scorer.hits(keys) == hand(corrected)
    assert hand(corrected) != hand(not corrected)
