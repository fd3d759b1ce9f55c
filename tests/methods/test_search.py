"""The vectorised search must choose exactly what a per-point loop chooses, ties included."""
from __future__ import annotations

import dataclasses
import io
import sys

import numpy as np
import pytest
import torch

from clipimo.features.file import feature_arrays, synthetic_features, validate_features
from clipimo.methods import cache, gda, tip, tipx
from clipimo.methods.cache import Cache, grid_counts, split_terms
from clipimo.methods.common import Problem
from clipimo.methods.search import PAPER_GRID, Grid, affine_logits, count_correct, first_best

SMALL_GRID = Grid(np.linspace(0, 20, 21), np.linspace(0, 20, 5), np.linspace(0, 30, 7))


def naive_counts(z, e, y, alphas, rl=None, gammas=(0.0,)):
    """The obvious loop: full logits at each point, argmax (first maximum), count hits."""
    out = np.zeros((len(alphas), len(gammas)), dtype=np.int64)
    for i, alpha in enumerate(alphas):
        for j, gamma in enumerate(gammas):
            if rl is None:
                logits = z + float(alpha) * e
            else:
                logits = z + float(gamma) * rl + float(alpha) * e
            out[i, j] = int((logits.argmax(1) == y).sum())
    return out


def tie_heavy(n=60, c=7, seed=0, step=0.25):
    """Quantised terms (exact float sums) so that many classes tie exactly at many points."""
    g = torch.Generator().manual_seed(seed)
    z, e, rl = (torch.randint(-4, 5, (n, c), generator=g).float() * step for _ in range(3))
    z[:, 3] = z[:, 1]  # identical classes: always tied, the lower index must win
    e[:, 3], rl[:, 3] = e[:, 1], rl[:, 1]
    z[n // 2:], e[n // 2:], rl[n // 2:] = z[: n - n // 2], e[: n - n // 2], rl[: n - n // 2]  # duplicate queries
    y = torch.randint(0, c, (n,), generator=g)
    y[::5] = 3  # labels on the losing side of the exact tie
    return z, e, rl, y


def near_ties(n=50, c=5, seed=1):
    """Continuous terms with pairs of classes crossing between grid points, within rounding."""
    g = torch.Generator().manual_seed(seed)
    z, e, rl = (torch.randn(n, c, generator=g) for _ in range(3))
    alpha0 = torch.tensor(np.linspace(0, 20, 200)[::7][1:], dtype=torch.float32)[torch.arange(n) % 28]
    e[:, 2] = e[:, 1] * (1 + 1e-6)
    z[:, 2] = z[:, 1] - alpha0 * (e[:, 2] - e[:, 1])  # classes 1 and 2 cross near alpha0
    y = torch.where(torch.arange(n) % 2 == 0, 1, 2)
    return z, e, rl, y


@pytest.mark.parametrize("make", [tie_heavy, near_ties])
def test_count_correct_matches_loop(make):
    z, e, rl, y = make()
    alphas, gammas = np.linspace(0, 20, 200), np.linspace(0, 30, 13)
    assert np.array_equal(count_correct(z, e, y, alphas).numpy(), naive_counts(z, e, y, alphas))
    got = count_correct(z, e, y, alphas, rl, gammas, budget=500).numpy()  # many small groups
    assert np.array_equal(got, naive_counts(z, e, y, alphas, rl, gammas))


@pytest.mark.parametrize("make", [tie_heavy, near_ties])
def test_count_correct_matches_loop_on_signed_grids(make):
    z, e, rl, y = make(seed=4)
    alphas, gammas = np.linspace(-3, 7, 41), np.linspace(-2, 2, 9)
    got = count_correct(z, e, y, alphas, rl, gammas, budget=1)  # one query per group
    assert np.array_equal(got.numpy(), naive_counts(z, e, y, alphas, rl, gammas))


def test_tie_fixture_really_ties():
    z, e, rl, y = tie_heavy()
    logits = z + 2.0 * e
    tied = (logits == logits.max(1, keepdim=True).values).sum(1) > 1
    assert tied.sum() >= 8
    counts = naive_counts(z, e, y, np.linspace(0, 20, 200))
    assert len(np.unique(counts)) < len(counts) / 4  # many grid points share an accuracy


def test_first_best_takes_first_in_alpha_beta_gamma_order():
    counts = np.zeros((3, 4, 5), dtype=np.int64)
    counts[2, 0, 0] = counts[1, 3, 4] = counts[1, 3, 2] = 7
    assert first_best(counts) == (1, 3, 2)
    assert first_best(torch.tensor([1, 5, 5])) == (1,)


def tie_problem(seed=0, n_val=14, n_test=11, classes=5, shots=3, dim=16) -> Problem:
    """Few, duplicated queries and two indistinguishable classes (1 and 2)."""
    f = synthetic_features(classes, shots, n_val, n_test, dim, noise=3.0, seed=seed)
    arrays = {k: v.copy() for k, v in feature_arrays(f).items()}
    arrays["text_weights"][:, 2] = arrays["text_weights"][:, 1]
    for key in ("cache_keys", "cache_keys_corrected"):
        arrays[key][arrays["cache_labels"] == 2] = arrays[key][arrays["cache_labels"] == 1]
    for key in ("cache_views", "cache_views_corrected"):
        arrays[key][:, arrays["cache_labels"] == 2] = arrays[key][:, arrays["cache_labels"] == 1]
    for split in ("val", "test"):
        for key in (f"{split}_feats", f"{split}_feats_corrected"):
            arrays[key][1::3] = arrays[key][0::3][: len(arrays[key][1::3])]
        labels = arrays[f"{split}_labels"]
        labels[1::3] = labels[0::3][: len(labels[1::3])]
        labels[np.flatnonzero(labels == 1)[::2]] = 2
        labels[::4] = 2
    return Problem.from_features(validate_features(arrays))


def ragged_problem(seed=0) -> Problem:
    """``tie_problem`` with classes of fewer keys (one with a single key) and the cache shuffled."""
    f = tie_problem(seed)
    rng = np.random.default_rng(seed)
    keep = np.ones(len(f.cache_labels), dtype=bool)
    labels = f.cache_labels.numpy()
    keep[np.flatnonzero(labels == 0)[1:]] = False
    keep[np.flatnonzero(labels == 3)[0]] = False
    order = rng.permutation(np.flatnonzero(keep))
    pick = torch.from_numpy(order)
    return dataclasses.replace(f, cache_keys=f.cache_keys[pick], cache_keys_corrected=f.cache_keys_corrected[pick],
                               cache_labels=f.cache_labels[pick])


def naive_cache_search(p: Problem, corrected: bool, with_kl: bool, grid: Grid):
    """Per-point loop over the grid on the method's terms (whole split); returns (counts, best, test hits)."""
    cache = Cache.of(p, corrected)

    def terms(split, betas):
        (t,) = split_terms(p, split, cache, corrected, with_kl, betas)  # one chunk at these sizes
        return t

    def hits(split, t, b, alpha, gamma):
        logits = affine_logits(t.z, t.e[b], alpha, t.rl, gamma)
        return int((logits.argmax(1) == split.labels).sum())

    gammas = grid.gammas if with_kl else [0.0]
    counts = np.zeros((len(grid.alphas), len(grid.betas), len(gammas)), dtype=np.int64)
    best, best_at = -1, None
    val = terms(p.val, grid.betas)
    for i, alpha in enumerate(grid.alphas):
        for j in range(len(grid.betas)):
            for k, gamma in enumerate(gammas):
                counts[i, j, k] = hits(p.val, val, j, float(alpha), float(gamma))
                if counts[i, j, k] > best:
                    best, best_at = counts[i, j, k], (i, j, k)
    i, j, k = best_at
    test = hits(p.test, terms(p.test, [grid.betas[j]]), 0, float(grid.alphas[i]), float(gammas[k]))
    return counts, best_at, test


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("method", [tip, tipx])
@pytest.mark.parametrize("make, seed", [(tie_problem, 0), (tie_problem, 1), (ragged_problem, 2)])
def test_cache_methods_match_naive_loop(method, corrected, make, seed):
    p = make(seed)
    with_kl = method is tipx
    counts, (i, j, k), test_hits = naive_cache_search(p, corrected, with_kl, SMALL_GRID)
    assert np.array_equal(grid_counts(p, corrected, with_kl, SMALL_GRID), counts)
    res = method.run(p, corrected=corrected, grid=SMALL_GRID)
    want = {"alpha": SMALL_GRID.alphas[i], "beta": SMALL_GRID.betas[j]}
    if with_kl:
        want["gamma"] = SMALL_GRID.gammas[k]
    assert res.hparams == want
    assert res.val_acc == 100.0 * counts[i, j, k] / len(p.val.labels)
    assert res.test_acc == 100.0 * test_hits / len(p.test.labels)


def naive_scores(logits, labels):
    """Top-1, top-5 and mean per-class recall (%), a class ranking above the label when its logit is
    larger, or equal with a lower index (argmax's rule), written out row by row."""
    ranks = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        ranks.append(sum(1 for c, v in enumerate(row) if v > row[y] or (v == row[y] and c < y)))
    ranks, labels = np.array(ranks), labels.numpy()
    recall = [np.mean(ranks[labels == c] == 0) for c in np.unique(labels)]
    return 100 * np.mean(ranks == 0), 100 * np.mean(ranks < 5), 100 * np.mean(recall)


@pytest.mark.parametrize("make", [tie_problem, ragged_problem])
def test_run_many_matches_the_naive_loop_for_every_variant(make):
    """The four variants searched together (shared terms, one test pass per stream) choose and
    score what each one's per-point loop does; 8 classes, so top-5 is not trivially 100%."""
    p = make(6) if make is ragged_problem else make(6, classes=8)
    variants = [(True, True), (False, False), (False, True), (True, False)]
    got = cache.run_many(p, variants, SMALL_GRID)
    assert list(got) == variants
    for corrected, with_kl in variants:
        counts, (i, j, k), _ = naive_cache_search(p, corrected, with_kl, SMALL_GRID)
        hp = {"alpha": SMALL_GRID.alphas[i], "beta": SMALL_GRID.betas[j]}
        if with_kl:
            hp["gamma"] = SMALL_GRID.gammas[k]
        (t,) = split_terms(p, p.test, Cache.of(p, corrected), corrected, with_kl, [hp["beta"]])
        top1, top5, recall = naive_scores(affine_logits(t.z, t.e[0], hp["alpha"], t.rl, hp.get("gamma", 0.0)),
                                          p.test.labels)
        r = got[(corrected, with_kl)]
        assert r.hparams == hp
        assert r.val_acc == 100.0 * counts[i, j, k] / len(p.val.labels)
        assert (r.test_acc, r.test_top5) == pytest.approx((top1, top5), abs=1e-9)
        assert r.test_mean_per_class_recall == pytest.approx(recall, abs=1e-9)


def test_tip_paper_grid_matches_naive_loop():
    p = tie_problem(2, n_val=9)
    counts, best, _ = naive_cache_search(p, True, False, PAPER_GRID)
    got = grid_counts(p, True, False, PAPER_GRID)
    assert np.array_equal(got, counts)
    assert first_best(got) == best
    assert (counts == counts[best]).sum() > 1  # the tie rule was exercised


@pytest.mark.parametrize("with_kl", [False, True])
def test_chunked_terms_give_the_same_counts(with_kl):
    p = Problem.from_features(synthetic_features(6, 4, 23, 5, 16, noise=3.0, seed=3))
    whole = grid_counts(p, True, with_kl, SMALL_GRID)
    assert np.array_equal(grid_counts(p, True, with_kl, SMALL_GRID, chunk_rows=5), whole)


@pytest.mark.parametrize("corrected", [False, True])
def test_gda_matches_naive_loop(corrected):
    p = tie_problem(4)
    views = p.views(corrected, "gda")
    weight, bias = gda.fit_gda(views.reshape(-1, views.shape[-1]), p.cache_labels.repeat(len(views)), p.num_classes)

    def hits(split, alpha):
        logits = 100.0 * (split.feats @ p.text_weights) + alpha * (split.query(corrected) @ weight + bias)
        return int((logits.argmax(1) == split.labels).sum())

    val = [hits(p.val, float(a)) for a in gda.GDA_ALPHAS]
    best = int(np.argmax(val))
    res = gda.run(p, corrected=corrected)
    assert res.hparams == {"alpha": gda.GDA_ALPHAS[best]}
    assert res.val_acc == 100.0 * val[best] / len(p.val.labels)
    assert res.test_acc == 100.0 * hits(p.test, float(gda.GDA_ALPHAS[best])) / len(p.test.labels)


@pytest.mark.parametrize("with_kl", [False, True])
def test_held_and_recomputed_terms_give_the_same_counts(monkeypatch, with_kl):
    p = ragged_problem(3)
    held = grid_counts(p, True, with_kl, SMALL_GRID, chunk_rows=4)
    monkeypatch.setattr(cache, "HOLD_ELEMENTS", 0)  # Tip-X recomputes A in a second pass
    assert np.array_equal(grid_counts(p, True, with_kl, SMALL_GRID, chunk_rows=4), held)


@pytest.mark.parametrize("with_kl", [False, True])
def test_cache_order_does_not_change_the_search(with_kl):
    """Interleaving the classes (each class's keys in the same order) gives the identical search."""
    p = tie_problem(5)
    order = torch.argsort(torch.arange(len(p.cache_labels)) % 3, stable=True)  # 0, 3, 6, ..., 1, 4, ...
    shuffled = dataclasses.replace(p, cache_keys=p.cache_keys[order], cache_keys_corrected=p.cache_keys_corrected[order],
                                   cache_labels=p.cache_labels[order])
    assert not torch.equal(shuffled.cache_labels, p.cache_labels)
    for corrected in (False, True):
        assert np.array_equal(grid_counts(shuffled, corrected, with_kl, SMALL_GRID),
                              grid_counts(p, corrected, with_kl, SMALL_GRID))


def test_terms_equal_the_float64_formulas():
    """Z, exp(-beta (1 - A)) L and (-R) L against a float64 one-hot computation (ragged, shuffled cache)."""
    p = ragged_problem(4)
    onehot = torch.nn.functional.one_hot(p.cache_labels, p.num_classes).double()
    f, fc, keys, w = (x.double() for x in (p.val.feats, p.val.feats_corrected, p.cache_keys_corrected, p.text_weights))
    a = fc @ keys.T
    log_p = torch.log_softmax(f @ w / 0.5, 1)
    log_q = torch.log_softmax(p.cache_keys.double() @ w / 0.5, 1)
    kl = (log_p.exp()[:, None] * (log_p[:, None] - log_q[None])).sum(-1)
    r = (kl - kl.min()) / (kl.max() - kl.min()) * (a.max() - a.min()) + a.min()
    betas = [0.0, 3.5, 20.0]
    (t,) = split_terms(p, p.val, Cache.of(p, True), True, True, betas)
    torch.testing.assert_close(t.z.double(), 100 * f @ w, atol=1e-4, rtol=1e-5)
    for b, beta in enumerate(betas):
        torch.testing.assert_close(t.e[b].double(), torch.exp(-beta * (1 - a)) @ onehot, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t.rl.double(), -r @ onehot, atol=1e-4, rtol=1e-5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bar_only_on_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(cache, "PROGRESS_DELAY", 0.0)
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    tipx.run(tie_problem(0), corrected=True, grid=SMALL_GRID)
    assert ("tipx-imo search" in err.getvalue()) == terminal
