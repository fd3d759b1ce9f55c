"""ProKeR against a direct implementation of the official maths: one np.linalg.solve per grid point."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from beyond_features import accuracy, first_best_loop, views_task

from clipimo.errors import ClipimoError
from clipimo.methods import proker
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.registry import run_method


def reference(feats, corrected: bool, support: str = "all"):
    """Grid search exactly as ProKeR defines it, float64, beta-major, strict >."""
    w = feats.text_weights.astype(np.float64)
    c = w.shape[1]
    if support == "all":
        e = feats.cache_views.shape[0]
        s = np.concatenate(list(feats.cache_views)).astype(np.float64)
        sk = np.concatenate(list(feats.cache_views_corrected if corrected else feats.cache_views)).astype(np.float64)
        y = np.tile(feats.cache_labels, e)
    else:
        s = feats.cache_keys.astype(np.float64)
        sk = (feats.cache_keys_corrected if corrected else feats.cache_keys).astype(np.float64)
        y = feats.cache_labels
    residual = np.eye(c)[y] - s @ w  # unscaled zero-shot term, C = W.shape[1]

    def predict(split, beta, lmbda):
        x = getattr(feats, f"{split}_feats").astype(np.float64)
        xk = getattr(feats, f"{split}_feats_corrected" if corrected else f"{split}_feats").astype(np.float64)
        k_ss = np.exp(-beta * (1 - sk @ sk.T))
        alpha = np.linalg.solve(k_ss / lmbda + np.eye(len(s)), residual)
        return x @ w + np.exp(-beta * (1 - xk @ sk.T)) @ alpha

    betas = np.linspace(0.1, 10, 20, dtype=np.float32).astype(np.float64)
    lmbdas = np.linspace(0.001, 1, 10, dtype=np.float32).astype(np.float64)
    scores = [((b, lm), accuracy(predict("val", b, lm), feats.val_labels)) for b in betas for lm in lmbdas]
    best, (beta, lmbda) = first_best_loop(scores)
    n_best = sum(score == best for _, score in scores)
    return {"val": best, "test": accuracy(predict("test", beta, lmbda), feats.test_labels),
            "beta": beta, "lmbda": lmbda, "ties": n_best}


@pytest.fixture(scope="module")
def feats():
    # 7 val queries: many grid points tie, so the first-best rule decides.
    return views_task(n_val=7, n_test=40, seed=3)


@pytest.mark.parametrize("route", ["cholesky", "eigh"])
@pytest.mark.parametrize("corrected", [False, True])
def test_matches_a_solve_per_grid_point(feats, corrected, route, monkeypatch):
    monkeypatch.setattr(proker, "EIGH_MIN_LMBDAS", 1 if route == "eigh" else 10**6)
    want = reference(feats, corrected)
    assert want["ties"] > 1  # the tie rule is exercised
    got = proker.run(Problem.from_features(feats), corrected=corrected)
    assert got.hparams == pytest.approx({"beta": want["beta"], "lmbda": want["lmbda"]}, rel=1e-6)
    assert got.val_acc == pytest.approx(want["val"])
    assert got.test_acc == pytest.approx(want["test"])
    assert got.meta["views"] == "all" and got.meta["support_rows"] == feats.cache_views.shape[0] * feats.cache_views.shape[1]


def test_imo_variant_changes_the_answer_and_mean_mode_uses_the_keys():
    feats = views_task(n_val=40, n_test=60, seed=11)
    problem = Problem.from_features(feats)
    plain, imo = proker.run(problem), proker.run(problem, corrected=True)
    want = reference(feats, True)
    assert (imo.test_acc, imo.hparams["beta"]) == (pytest.approx(want["test"]), pytest.approx(want["beta"]))
    assert (plain.val_acc, plain.test_acc, plain.hparams) != (imo.val_acc, imo.test_acc, imo.hparams)
    mean = proker.run(problem, options=MethodOptions(proker_views="mean"))
    want_mean = reference(feats, False, support="mean")
    assert mean.meta == {"views": "mean", "support_rows": len(feats.cache_keys), "grid": "default"}
    assert (mean.val_acc, mean.test_acc) == (pytest.approx(want_mean["val"]), pytest.approx(want_mean["test"]))


def test_eigh_basis_equals_the_official_solve():
    feats = views_task(seed=1)
    sup = proker.support_set(Problem.from_features(feats), corrected=False)
    w = torch.from_numpy(feats.text_weights).double()
    base = proker.basis(sup, w, 2.5)
    k = proker.kernel(sup.feats, sup.feats, 2.5)
    direct = torch.linalg.solve(k / 0.3 + torch.eye(len(k), dtype=k.dtype), sup.targets - sup.feats @ w)
    torch.testing.assert_close(base.q @ base.coefficients(0.3), direct, rtol=1e-8, atol=1e-9)


def test_auto_falls_back_to_mean_keys_beyond_the_limit(feats, monkeypatch):
    monkeypatch.setattr(proker, "MAX_ALL_VIEWS", len(feats.cache_keys) * feats.cache_views.shape[0] - 1)
    assert proker.run(Problem.from_features(feats)).meta["views"] == "mean"


def test_views_are_required_unless_mean(feats):
    problem = dataclasses.replace(Problem.from_features(feats), cache_views=None, cache_views_corrected=None)
    with pytest.raises(ClipimoError, match="proker-imo.*cache_views"):
        run_method("proker-imo", problem, MethodOptions(proker_views="all"))
    assert run_method("proker", problem, MethodOptions(proker_views="mean")).meta["views"] == "mean"


def test_official_grid_by_dataset_name():
    betas, lmbdas = proker.grid_for(MethodOptions(proker_grid="official", dataset="DescribableTextures"))
    assert (len(betas), betas[0], len(lmbdas), lmbdas[-1]) == (20, pytest.approx(0.1), 100, pytest.approx(10))
    assert len(proker.grid_for(MethodOptions(proker_grid="official", dataset="ImageNetV2"))[0]) == 10
    with pytest.raises(ClipimoError, match="--proker-grid official: no official configuration for dataset .task."):
        proker.grid_for(MethodOptions(proker_grid="official", dataset="task"))
    with pytest.raises(ClipimoError, match="proker-views"):
        MethodOptions(proker_views="some")
