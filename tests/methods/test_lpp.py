"""LP++ against a float64 re-derivation written here: class-sum init, nn.Linear's seeded bias,
alpha0 and both closed-form step sizes, then full-batch SGD with momentum with hand-written
gradients, alpha's accumulated gradient every 10th epoch and the last-best val epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from beyond_features import views_task

from clipimo.errors import ClipimoError
from clipimo.features.file import feature_arrays, validate_features
from clipimo.methods import lpp
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.registry import run_method

EPOCHS = 23  # crosses two alpha steps (after epochs 10 and 20)


def task(seed: int = 0):
    return views_task(num_classes=5, shots=4, short_class=2, short_shots=1, passes=2, dim=12, n_val=40,
                      n_test=40, seed=seed)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reference(feats, corrected: bool, seed: int, epochs: int = EPOCHS):
    """Kept (W, b, alpha), the kept epoch (0-based), its val hits and the init, all in float64."""
    w = feats.text_weights.astype(np.float64)
    views = feats.cache_views_corrected if corrected else feats.cache_views
    phi = views[0].astype(np.float64)
    text = feats.cache_views[0].astype(np.float64) @ w          # the text branch is always original
    y = feats.cache_labels
    n, dim = phi.shape
    c = w.shape[1]
    onehot = np.eye(c)[y]
    weight = onehot.T @ phi                                       # class sums
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bias = torch.nn.Linear(dim, c).bias.detach().double().numpy()
    means = [text[y == k, k].mean() for k in range(c) if (y == k).any()]
    alpha = np.full(c, 250 * np.mean(means))
    init = {"weight": weight.copy(), "bias": bias.copy(), "alpha": alpha[0],
            "lr_w": 4 * n / np.linalg.eigvalsh(phi.T @ phi).max(), "lr_alpha": n / (4 * (text ** 2).sum(0).max())}
    vq = (feats.val_feats_corrected if corrected else feats.val_feats).astype(np.float64)
    vt = feats.val_feats.astype(np.float64) @ w
    mw, mb = np.zeros_like(weight), np.zeros_like(bias)
    acc_alpha = np.zeros(c)
    best, kept = -1, None
    for ep in range(epochs):
        g = (softmax(phi @ weight.T + bias + alpha * text) - onehot) / n
        gw, gb = g.T @ phi, g.sum(0)
        acc_alpha += (g * text).sum(0)
        mw, mb = (gw, gb) if ep == 0 else (0.9 * mw + gw, 0.9 * mb + gb)
        weight, bias = weight - init["lr_w"] * mw, bias - init["lr_w"] * mb
        if (ep + 1) % 10 == 0:
            alpha = alpha - init["lr_alpha"] * acc_alpha
        hits = int(((vq @ weight.T + bias + alpha * vt).argmax(1) == feats.val_labels).sum())
        if hits >= best:
            best, kept = hits, (ep, weight.copy(), bias.copy(), alpha.copy())
    return kept, best, init


@pytest.mark.parametrize("corrected", [False, True])
def test_init_and_step_sizes(corrected):
    feats = task()
    problem = Problem.from_features(feats)
    phi, text = lpp._rows(problem, corrected)
    got = lpp.initialise(phi, text, problem.cache_labels, seed=3)
    _, _, want = reference(feats, corrected, seed=3, epochs=0)
    np.testing.assert_allclose(got.weight.numpy(), want["weight"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.bias.numpy(), want["bias"].astype(np.float32))  # bitwise nn.Linear's draw
    assert got.alpha.shape == (1, 5) and bool((got.alpha == got.alpha[0, 0]).all())
    assert float(got.alpha[0, 0]) == pytest.approx(want["alpha"], rel=1e-5)
    assert got.lr_w == pytest.approx(want["lr_w"], rel=1e-4)
    assert float(got.lr_alpha) == pytest.approx(want["lr_alpha"], rel=1e-5)


@pytest.mark.parametrize("corrected", [False, True])
def test_training_steps_and_kept_epoch(corrected):
    feats = task(seed=1)
    problem = Problem.from_features(feats)
    head, epoch, hits, _ = lpp.train(problem, corrected, seed=2, epochs=EPOCHS)
    (ref_epoch, weight, bias, alpha), ref_hits, _ = reference(feats, corrected, seed=2)
    assert (epoch, hits) == (ref_epoch, ref_hits)
    np.testing.assert_allclose(head.weight.numpy(), weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.bias.numpy(), bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.alpha.numpy()[0], alpha, rtol=1e-4, atol=1e-4)


def test_imo_reads_the_corrected_visual_stream_and_original_text():
    """lp++-imo = the reference with corrected visual rows/queries and ORIGINAL text; the other
    assignments of the streams give other weights (so the comparison can fail)."""
    feats = task(seed=1)
    problem = Problem.from_features(feats)
    head, _, _, _ = lpp.train(problem, True, seed=2, epochs=EPOCHS)
    (_, weight, _, alpha), _, _ = reference(feats, True, seed=2)
    (_, weight_orig, _, _), _, _ = reference(feats, False, seed=2)
    np.testing.assert_allclose(head.weight.numpy(), weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.alpha.numpy()[0], alpha, rtol=1e-4, atol=1e-4)
    assert np.abs(weight - weight_orig).max() > 1e-2
    # the text branch on the corrected stream would change alpha0
    swapped = validate_features({**feature_arrays(feats), "cache_views": feats.cache_views_corrected})
    _, _, init_swapped = reference(swapped, True, seed=2, epochs=0)
    assert abs(init_swapped["alpha"] - float(lpp.initialise(*lpp._rows(problem, True), problem.cache_labels,
                                                              2).alpha[0, 0])) > 1e-3


def test_run_scores_the_kept_head_and_reports_its_epoch():
    feats = task(seed=2)
    problem = Problem.from_features(feats)
    result = run_method("lp++-imo", problem, MethodOptions(seed=5))
    (ep, weight, bias, alpha), hits, init = reference(feats, True, seed=5, epochs=lpp.EPOCHS)
    assert result.hparams == {"epoch": ep + 1}
    assert result.val_acc == pytest.approx(100 * hits / 40)
    logits = feats.test_feats_corrected @ weight.T + bias + alpha * (feats.test_feats @ feats.text_weights)
    assert result.test_acc == pytest.approx(100 * np.mean(logits.argmax(1) == feats.test_labels))
    assert result.meta["alpha0"] == pytest.approx(init["alpha"], rel=1e-5)
    assert result.meta["support"] == "view 0" and result.meta["seed"] == 5
    assert result.test_top5 is not None and result.test_mean_per_class_recall is not None


def test_same_seed_same_head_other_seed_other_bias():
    problem = Problem.from_features(task())
    a, b, c = (lpp.train(problem, False, seed=s, epochs=5)[0] for s in (1, 1, 2))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and torch.equal(a.alpha, b.alpha)
    assert not torch.equal(a.bias, c.bias)


def test_needs_views():
    arrays = {k: v for k, v in feature_arrays(task()).items() if not k.startswith("cache_views")}
    with pytest.raises(ClipimoError, match="lp\\+\\+ fits on every augmented view"):
        run_method("lp++", Problem.from_features(validate_features(arrays)))
