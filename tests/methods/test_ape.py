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


def test_row_blocks_and_both_stacking_paths_agree(feats, monkeypatch):
    """The counter in blocks of 2 rows (the last of 1), and with each gamma's term counted alone
    instead of the stack as one problem: the same run."""
    from clipimo.methods import search

    problem = Problem.from_features(feats)
    grid = ape.search_grid(SCALE, STEP)
    whole = ape.run(problem, feat_num=8, grid=grid)
    monkeypatch.setattr(ape, "COUNT_BLOCK", 2 * problem.num_classes)
    assert problem.val.labels.shape[0] % 2 == 1
    assert ape.run(problem, feat_num=8, grid=grid) == whole
    monkeypatch.setattr(search, "STACK_ELEMENTS", 0)
    assert ape.run(problem, feat_num=8, grid=grid) == whole


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


def tied_task(seed: int = 3):
    """Random features where class 3 duplicates class 1 (same text weight, same keys: every
    logit of the two is equal, argmax's first-index rule decides) and val repeats rows."""
    from clipimo.features.file import validate_features

    rng = np.random.default_rng(seed)
    dim, classes = 10, 4

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    centres = rng.standard_normal((classes, dim))
    centres[3] = centres[1]
    labels = rng.permutation(np.repeat(np.arange(classes), 3))
    keys = unit(centres[labels] + 0.9 * rng.standard_normal((len(labels), dim)))
    keys[labels == 3] = keys[labels == 1]
    text = unit(centres + 0.5 * rng.standard_normal((classes, dim)))
    text[3] = text[1]
    corrected = unit(keys + 0.3 * rng.standard_normal(keys.shape))
    corrected[labels == 3] = corrected[labels == 1]
    arrays = {"text_weights": np.ascontiguousarray(text.T), "cache_keys": keys, "cache_keys_corrected": corrected,
              "cache_labels": labels}
    for split, n in (("val", 12), ("test", 10)):
        y = rng.permutation(np.resize([0, 1, 2, 3, 1, 3], n))  # classes 1 and 3 half the rows
        x = unit(centres[y] + 0.8 * rng.standard_normal((n, dim)))
        if split == "val":
            x[6:], y[6:] = x[:6], y[:6]
        arrays.update({f"{split}_feats": x, f"{split}_feats_corrected": unit(x + 0.3 * rng.standard_normal(x.shape)),
                       f"{split}_labels": y.astype(np.int64)})
    return validate_features(arrays, "tied task")


@pytest.mark.parametrize("stack_elements", [None, 0])
@pytest.mark.parametrize("corrected", [False, True])
def test_search_equals_brute_force_over_the_points_with_ties(monkeypatch, stack_elements, corrected):
    """Every grid point scored by argmax of the per-point logits (the test pass's computation),
    then the first best in beta -> alpha -> gamma order: the search's choice and count, on both of
    the counter's paths (the stack of gamma terms as one problem, and one term at a time)."""
    problem = Problem.from_features(tied_task())
    grid = ape.search_grid((7.0, 7.0, 1.0), (6, 5, 4))
    ref = ape.refine(problem, corrected, 6)
    labels = problem.val.labels
    best, point, tied_points, tied_rows = -1, None, 0, 0
    for beta in grid[0]:
        for alpha in grid[1]:
            for gamma in grid[2]:
                logits = torch.cat([x for _, x in ape.logits(problem, problem.val, ref, float(alpha), float(beta),
                                                            float(gamma))])
                hits = sum(int(logits[i].argmax()) == int(labels[i]) for i in range(len(labels)))
                top = logits.max(1, keepdim=True).values
                tied_rows += int(((logits == top).sum(1) > 1).sum())
                tied_points += hits == best
                if hits > best:
                    best, point, tied_points = hits, (float(alpha), float(beta), float(gamma)), 1
    assert tied_rows > 0 and tied_points > 1  # the class tie and the point order both decide
    if stack_elements is not None:
        from clipimo.methods import search

        monkeypatch.setattr(search, "STACK_ELEMENTS", stack_elements)
    got = ape.run(problem, corrected=corrected, feat_num=6, grid=grid)
    assert (got.hparams["alpha"], got.hparams["beta"], got.hparams["gamma"]) == point
    assert got.val_acc == pytest.approx(100.0 * best / len(labels))
