"""APE against the pairwise-mean definition of its criterion and a plain loop over its grid."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from beyond_features import accuracy, first_best_loop, views_task

from clipimo.errors import ClipimoError
from clipimo.methods import ape
from clipimo.methods.common import MethodOptions, Problem

SCALE, STEP = (7.0, 7.0, 1.0), (8, 5, 4)


def pairwise_criterion(w, keys, labels, w0=0.5, w1=0.5):
    """Mean over every pair of vectors from different classes of u[d] v[d], by enumeration."""
    groups = [[w[:, c]] + [k for k, y in zip(keys, labels) if y == c] for c in range(w.shape[1])]
    total, pairs = np.zeros(w.shape[0]), 0
    for i, j in itertools.permutations(range(len(groups)), 2):
        for u in groups[i]:
            for v in groups[j]:
                total += u * v
                pairs += 1
    return -w0 * total / pairs + w1 * w.var(axis=1, ddof=1)


def reference(feats, corrected: bool, feat_num: int, weights=(0.5, 0.5), scale=SCALE, step=STEP):
    w = feats.text_weights.astype(np.float64)
    keys = feats.cache_keys.astype(np.float64)
    idx = np.argsort(-pairwise_criterion(w, keys, feats.cache_labels, *weights))[:feat_num]

    def norm(x, axis=1):
        return x / np.linalg.norm(x, axis=axis, keepdims=True)

    w_sel, k_sel = norm(w[idx], 0), norm(keys[:, idx])
    k_aff = norm((feats.cache_keys_corrected if corrected else feats.cache_keys)[:, idx].astype(np.float64))
    onehot = np.eye(w.shape[1])[feats.cache_labels]
    logit = k_sel @ w_sel
    p = np.exp(logit) / np.exp(logit).sum(1, keepdims=True)
    div = (onehot * np.log2((onehot + 1e-6) / (p + 1e-6))).sum(1)

    def predict(split, alpha, beta, gamma):
        f = getattr(feats, f"{split}_feats").astype(np.float64)
        fq = getattr(feats, f"{split}_feats_corrected" if corrected else f"{split}_feats").astype(np.float64)
        affinity = norm(fq[:, idx]) @ k_aff.T
        return 100 * f @ w + alpha * np.exp(-beta * (1 - affinity)) @ (onehot * np.exp(gamma * div)[:, None])

    scores = []
    for i in range(step[0]):
        beta = i * (scale[0] - 0.1) / step[0] + 0.1
        for j in range(step[1]):
            alpha = j * (scale[1] - 0.1) / step[1] + 0.1
            for k in range(step[2]):
                gamma = k * scale[2] / step[2]
                scores.append(((alpha, beta, gamma), accuracy(predict("val", alpha, beta, gamma), feats.val_labels)))
    best, point = first_best_loop(scores)
    return {"val": best, "test": accuracy(predict("test", *point), feats.test_labels), "point": point,
            "ties": sum(s == best for _, s in scores)}


@pytest.fixture(scope="module")
def feats():
    return views_task(num_classes=5, shots=4, short_class=3, short_shots=1, dim=12, n_val=9, n_test=40, seed=4)


def test_closed_form_criterion_equals_the_pairwise_mean_on_a_shuffled_uneven_cache(feats):
    got = ape.channel_criterion(*(torch.from_numpy(a) for a in (feats.text_weights, feats.cache_keys,
                                                                 feats.cache_labels)))
    want = pairwise_criterion(feats.text_weights.astype(np.float64), feats.cache_keys.astype(np.float64),
                              feats.cache_labels)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("corrected", [False, True])
def test_search_matches_a_plain_loop(feats, corrected):
    want = reference(feats, corrected, feat_num=8)
    assert want["ties"] > 1  # the beta -> alpha -> gamma tie order decides
    got = ape.run(Problem.from_features(feats), corrected=corrected, feat_num=8, grid=ape.search_grid(SCALE, STEP))
    assert (got.hparams["alpha"], got.hparams["beta"], got.hparams["gamma"]) == pytest.approx(want["point"])
    assert (got.val_acc, got.test_acc) == (pytest.approx(want["val"]), pytest.approx(want["test"]))
    assert got.meta["text"] == "templates, no CuPL" and got.meta["feat_num"] == 8


def test_imo_changes_the_answer_and_defaults_follow_the_spec():
    feats = views_task(n_val=40, n_test=60, seed=21)
    problem = Problem.from_features(feats)
    grid = ape.search_grid(SCALE, STEP)
    plain, imo = (ape.run(problem, corrected=c, grid=grid) for c in (False, True))
    want = reference(feats, True, feat_num=ape.default_feat_num(12))
    assert imo.test_acc == pytest.approx(want["test"])
    assert (plain.val_acc, plain.test_acc, plain.hparams) != (imo.val_acc, imo.test_acc, imo.hparams)
    assert ape.default_feat_num(512) == 350 and ape.default_feat_num(1024) == 700
    betas, alphas, gammas = ape.search_grid()
    assert (len(betas), len(alphas), len(gammas)) == (200, 20, 20)
    assert betas[0] == pytest.approx(0.1) and betas[-1] < 7 and gammas[0] == 0 and gammas[-1] < 1


def test_large_problems_use_the_pruned_exact_counter(feats, monkeypatch):
    problem = Problem.from_features(feats)
    grid = ape.search_grid(SCALE, STEP)
    direct = ape.run(problem, feat_num=8, grid=grid)
    monkeypatch.setattr(ape, "EVAL_BUDGET", 0)
    assert ape.run(problem, feat_num=8, grid=grid) == direct


def test_official_config_by_dataset_name(feats):
    """FGVCAircraft's released config: 800 of 1024 channels (here round(12 * 800 / 1024) = 9),
    weights (0.1, 0.9), scales [20, 10, 1], steps [200, 20, 20]."""
    problem = Problem.from_features(feats)
    got = ape.run(problem, options=MethodOptions(ape_config="official", dataset="FGVCAircraft"))
    want = reference(feats, False, feat_num=9, weights=(0.1, 0.9), scale=(20.0, 10.0, 1.0), step=(200, 20, 20))
    assert (got.hparams["alpha"], got.hparams["beta"], got.hparams["gamma"]) == pytest.approx(want["point"])
    assert (got.val_acc, got.test_acc) == (pytest.approx(want["val"]), pytest.approx(want["test"]))
    assert got.meta == {"config": "official", "feat_num": 9, "criterion_weights": [0.1, 0.9],
                        "search_scale": [20.0, 10.0, 1.0], "search_step": [200, 20, 20], "text": "templates, no CuPL"}
    # ImageNet's own steps (5 gammas) and the default are recorded as such
    imagenet = ape.settings(problem, MethodOptions(ape_config="official", dataset="imagenet"))
    assert imagenet[0].step == (200, 20, 5) and imagenet[1] == round(12 * 500 / 1024)
    assert ape.run(problem, feat_num=8, grid=ape.search_grid(SCALE, STEP)).meta["config"] == "default"
    with pytest.raises(ClipimoError, match="--ape-config official: no official configuration for dataset 'CUB'"):
        ape.run(problem, options=MethodOptions(ape_config="official", dataset="CUB"))
