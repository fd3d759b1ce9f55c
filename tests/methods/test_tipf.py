"""Tip-F against a hand-written training loop (dense one-hot product, PyTorch's recursive cosine
scheduler) and a plain loop over a small Tip grid."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from beyond_features import accuracy, first_best_loop, views_task

from clipimo.errors import ClipimoError
from clipimo.methods import tipf
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.official import TipfConfig, tipf_config
from clipimo.methods.registry import run_method
from clipimo.methods.search import Grid

GRID = Grid(np.linspace(0, 20, 9), np.linspace(0, 20, 5), np.zeros(1))
EPOCHS, BATCH = 4, 6


def reference(feats, corrected: bool, seed: int, epochs: int = EPOCHS, a0: float = 1.17, batch: int = BATCH):
    t = {k: torch.from_numpy(getattr(feats, k)) for k in (
        "text_weights", "cache_keys", "cache_keys_corrected", "cache_labels", "cache_views",
        "cache_views_corrected", "val_feats", "val_feats_corrected", "val_labels")}
    w, y = t["text_weights"], t["cache_labels"]
    onehot = torch.eye(w.shape[1])[y]
    views, aff_views = t["cache_views"], t["cache_views_corrected" if corrected else "cache_views"]
    val_q = t["val_feats_corrected" if corrected else "val_feats"]

    def forward(zs, aff, keys, a=a0, b=1.0):
        return 100 * zs @ w + a * torch.exp(-b * (1 - aff @ keys.T)) @ onehot

    theta = torch.nn.Parameter(t["cache_keys_corrected" if corrected else "cache_keys"].clone())
    opt = torch.optim.AdamW([theta], lr=1e-3, eps=1e-4)  # default weight_decay = 0.01
    n = len(y)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(n / batch))
    g = torch.Generator().manual_seed(seed)
    best, best_keys, best_epoch = 0, None, 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        e = epoch % len(views)
        for rows in perm.split(batch):
            loss = torch.nn.functional.cross_entropy(forward(views[e][rows], aff_views[e][rows], theta), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            hits = int((forward(t["val_feats"], val_q, theta).argmax(1) == t["val_labels"]).sum())
        if hits > best:
            best, best_keys, best_epoch = hits, theta.detach().clone(), epoch + 1
    keys = best_keys.numpy().astype(np.float64)

    def predict(split, alpha, beta):
        f = getattr(feats, f"{split}_feats").astype(np.float64)
        q = getattr(feats, f"{split}_feats_corrected" if corrected else f"{split}_feats").astype(np.float64)
        return 100 * f @ feats.text_weights + alpha * np.exp(-beta * (1 - q @ keys.T)) @ onehot.numpy()

    scores = [((a, b), accuracy(predict("val", a, b), feats.val_labels)) for a in GRID.alphas for b in GRID.betas]
    val, point = first_best_loop(scores)
    return {"val": val, "test": accuracy(predict("test", *point), feats.test_labels), "point": point,
            "epoch": best_epoch, "keys": best_keys}


@pytest.fixture(scope="module")
def feats():
    return views_task(num_classes=5, shots=4, short_class=0, short_shots=2, passes=3, n_val=30, n_test=40, seed=8)


@pytest.mark.parametrize("corrected", [False, True])
def test_matches_a_hand_written_training_loop_and_grid(feats, corrected):
    want = reference(feats, corrected, seed=5)
    problem = Problem.from_features(feats)
    keys, epoch = tipf.train_keys(problem, corrected, seed=5, batch=BATCH, epochs=EPOCHS)
    assert epoch == want["epoch"] >= 1
    torch.testing.assert_close(keys, want["keys"], rtol=1e-5, atol=1e-6)
    got = tipf.run(problem, corrected, MethodOptions(seed=5, tipf_batch=BATCH), epochs=EPOCHS, grid=GRID)
    assert (got.hparams["alpha"], got.hparams["beta"]) == pytest.approx(want["point"])
    assert (got.val_acc, got.test_acc) == (pytest.approx(want["val"]), pytest.approx(want["test"]))
    assert got.meta["epoch"] == want["epoch"] and got.meta["seed"] == 5
    # the keys are trained on a copy
    np.testing.assert_array_equal(problem.keys(corrected).numpy(),
                                  feats.cache_keys_corrected if corrected else feats.cache_keys)


def test_training_moves_the_keys_and_the_seed_matters(feats):
    problem = Problem.from_features(feats)
    one, _ = tipf.train_keys(problem, False, seed=1, batch=BATCH, epochs=2)
    two, _ = tipf.train_keys(problem, False, seed=2, batch=BATCH, epochs=2)
    assert not torch.equal(one, problem.cache_keys) and not torch.equal(one, two)


def test_imo_changes_the_answer(feats):
    problem = Problem.from_features(feats)
    opts = MethodOptions(seed=3, tipf_batch=BATCH)
    plain = run_method("tip-f", problem, opts)
    imo = run_method("tip-f-imo", problem, opts)
    assert (plain.val_acc, plain.test_acc, plain.hparams) != (imo.val_acc, imo.test_acc, imo.hparams)
    assert set(plain.hparams) == {"alpha", "beta"} and plain.meta["batch"] == BATCH


def test_official_config_takes_the_datasets_training_alpha_and_epochs(feats):
    """DTD's released config: init_alpha 2, 20 epochs (EuroSAT: 100); the search grid stays the project's."""
    want = reference(feats, False, seed=2, epochs=20, a0=2.0)
    opts = MethodOptions(seed=2, tipf_batch=BATCH, tipf_config="official", dataset="DescribableTextures")
    got = tipf.run(Problem.from_features(feats), False, opts, grid=GRID)
    assert (got.hparams["alpha"], got.hparams["beta"]) == pytest.approx(want["point"])
    assert (got.val_acc, got.test_acc) == (pytest.approx(want["val"]), pytest.approx(want["test"]))
    assert got.meta == {"epoch": want["epoch"], "epochs": 20, "seed": 2, "batch": BATCH, "config": "official",
                        "train_alpha": 2.0, "train_beta": 1.0}
    assert tipf_config(MethodOptions(tipf_config="official", dataset="eurosat")) == TipfConfig(2.0, 100)
    with pytest.raises(ClipimoError, match="--tipf-config official: no official configuration for dataset 'task'"):
        tipf.run(Problem.from_features(feats), False, MethodOptions(tipf_config="official", dataset="task"))
