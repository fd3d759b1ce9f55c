"""ZS-LP and CLAP against a float64 re-derivation written here: P0 from the text norms, CLAP's
multipliers from a dense loop, the warm-up + cosine rate, the seeded view-major pool shuffle
with Dassl's batch count, and SGD with momentum written by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from beyond_features import views_task

from clipimo.errors import ClipimoError
from clipimo.features.file import feature_arrays, validate_features
from clipimo.methods import clap
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.registry import run_method

EPOCHS = 3


def task(seed: int = 0, shots: int = 4):
    feats = views_task(num_classes=5, shots=shots, short_class=2, short_shots=1, passes=3, dim=12, n_val=30,
                       n_test=30, seed=seed)
    norms = np.random.default_rng(seed + 7).uniform(4.0, 9.0, 5).astype(np.float32)
    return validate_features({**feature_arrays(feats), "text_norms": norms})


def lam_reference(feats, p0: np.ndarray) -> np.ndarray:
    """Per class, the mean softmax of the true class over the ORIGINAL pool rows of that class."""
    rows = feats.cache_views.reshape(-1, feats.dim).astype(np.float64)
    labels = np.tile(feats.cache_labels, feats.cache_views.shape[0])
    lam = np.zeros(len(p0))
    for c in range(len(p0)):
        x = rows[labels == c]
        z = 100 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (p0 / np.linalg.norm(p0, axis=1, keepdims=True)).T
        e = np.exp(z - z.max(1, keepdims=True))
        lam[c] = (e[:, c] / e.sum(1)).mean()
    return lam


def reference(feats, corrected: bool, constrained: bool, seed: int, batch: int, epochs: int = EPOCHS):
    """Prototypes after ``epochs`` (float64 autograd for the gradient; the loop, schedule, shuffle
    and momentum written here)."""
    p0 = (feats.text_weights * feats.text_norms[None]).T.astype(np.float64)
    views = feats.cache_views_corrected if corrected else feats.cache_views
    e, n, _ = views.shape
    pool = torch.from_numpy(np.concatenate([views[k] for k in range(e)]).astype(np.float64))
    labels = torch.from_numpy(np.concatenate([feats.cache_labels] * e))
    lam = torch.from_numpy(lam_reference(feats, p0)) if constrained else None
    base = torch.from_numpy(p0)
    p = base.clone()
    buf = None
    g = torch.Generator().manual_seed(seed)
    steps = n // batch if n >= batch else 1
    for epoch in range(epochs):
        lr = 1e-5 if epoch == 0 else 0.1 * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
        perm = torch.randperm(e * n, generator=g)
        for j in range(steps):
            rows = perm[j * batch:(j + 1) * batch]
            q = p.clone().requires_grad_(True)
            x = pool[rows] / pool[rows].norm(dim=1, keepdim=True)
            loss = torch.nn.functional.cross_entropy(100 * x @ (q / q.norm(dim=1, keepdim=True)).T, labels[rows])
            if constrained:
                loss = loss + (lam * ((q - base) ** 2).sum(1)).mean()
            loss.backward()
            buf = q.grad if buf is None else 0.9 * buf + q.grad
            p = p - lr * buf
    return p.numpy(), (None if lam is None else lam.numpy())


def test_learning_rate_schedule():
    assert clap.learning_rate(0) == 1e-5
    assert clap.learning_rate(1) == pytest.approx(0.1)
    assert clap.learning_rate(299) == pytest.approx(0.1 * (1 + math.cos(math.pi * 298 / 300)) / 2)
    assert 1e-5 < clap.learning_rate(299) < 1.2e-5


def test_batches_per_epoch_follow_the_support_images():
    assert clap.batches_per_epoch(16000, 256) == 62
    assert clap.batches_per_epoch(101, 256) == 1
    assert clap.batches_per_epoch(256, 256) == 1


def test_clap_multipliers_and_p0():
    feats = task()
    problem = Problem.from_features(feats)
    p0 = clap.initial_prototypes(problem, "clap")
    ref_p0 = (feats.text_weights.astype(np.float64) * feats.text_norms[None]).T
    np.testing.assert_allclose(p0.numpy(), ref_p0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(p0.numpy(), axis=1), feats.text_norms, rtol=1e-5)
    rows, labels = clap.pool(problem, False, "clap")
    lam = clap.multipliers(rows, labels, p0, 100.0)
    np.testing.assert_allclose(lam.numpy(), lam_reference(feats, ref_p0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("batch", [4, 7, 256])   # several batches, a remainder dropped, one batch bigger than N
def test_first_epochs_match_the_reference(constrained, batch):
    feats = task(seed=1)
    problem = Problem.from_features(feats)
    got, lam = clap.train(problem, False, constrained, seed=3, batch=batch, epochs=EPOCHS)
    want, want_lam = reference(feats, False, constrained, seed=3, batch=batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want - (feats.text_weights * feats.text_norms[None]).T).max() > 1e-3  # it moved
    if constrained:
        np.testing.assert_allclose(lam.numpy(), want_lam, rtol=1e-4, atol=1e-6)
    else:
        assert lam is None


@pytest.mark.parametrize("constrained", [False, True])
def test_imo_trains_on_the_corrected_pool_with_original_multipliers(constrained):
    """-imo = the reference on corrected pool rows with lam from the ORIGINAL pool; the original
    pool gives other prototypes, so a variant reading the wrong stream fails."""
    feats = task(seed=2)
    problem = Problem.from_features(feats)
    got, lam = clap.train(problem, True, constrained, seed=1, batch=5, epochs=EPOCHS)
    want, want_lam = reference(feats, True, constrained, seed=1, batch=5)
    other, _ = reference(feats, False, constrained, seed=1, batch=5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want - other).max() > 1e-3
    if constrained:
        np.testing.assert_allclose(lam.numpy(), want_lam, rtol=1e-4, atol=1e-6)
        wrong = lam_reference(validate_features({**feature_arrays(feats),
                                                 "cache_views": feats.cache_views_corrected}), (
            feats.text_weights.astype(np.float64) * feats.text_norms[None]).T)
        assert np.abs(wrong - want_lam).max() > 1e-3


def test_imo_scores_corrected_queries():
    feats = task(seed=3)
    problem = Problem.from_features(feats)
    result = run_method("clap-imo", problem, MethodOptions(seed=2, clap_batch=6))
    prototypes, _ = clap.train(problem, True, True, seed=2, batch=6)
    p = prototypes.numpy().astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    for split in ("val", "test"):
        corrected = getattr(feats, f"{split}_feats_corrected") @ p.T
        labels = getattr(feats, f"{split}_labels")
        acc = getattr(result, f"{split}_acc")
        assert acc == pytest.approx(100 * np.mean(corrected.argmax(1) == labels))
    assert result.hparams == {}
    assert result.meta == {"epochs": 300, "batch": 6, "batches_per_epoch": 2, "pool": 3 * 17, "seed": 2}


def test_seeds_order_the_minibatches():
    problem = Problem.from_features(task())
    a, b, c = (clap.train(problem, False, True, seed=s, batch=4, epochs=2)[0] for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_missing_text_norms_is_one_error():
    arrays = {k: v for k, v in feature_arrays(task()).items() if k != "text_norms"}
    with pytest.raises(ClipimoError, match="text_norms"):
        run_method("zs-lp", Problem.from_features(validate_features(arrays)))


def test_text_norms_are_validated():
    arrays = feature_arrays(task())
    for bad in (np.ones(4, np.float32), -np.ones(5, np.float32), np.array([1, 2, np.nan, 1, 1], np.float32)):
        with pytest.raises(ClipimoError, match="text_norms"):
            validate_features({**arrays, "text_norms": bad})
