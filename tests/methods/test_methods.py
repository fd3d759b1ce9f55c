"""Method building blocks: the KL term, rescaling, GDA's closed form, the registry, feature use."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clipimo.errors import ClipimoError
from clipimo.features.file import synthetic_features
from clipimo.methods import gda
from clipimo.methods.cache import Cache, cache_logits, kl_divergence, rescaled_sums
from clipimo.methods.common import Problem, class_sums
from clipimo.methods.gda import fit_gda
from clipimo.methods.registry import METHODS, parse_methods
from clipimo.methods.search import Grid

TINY_GRID = Grid(np.linspace(0, 20, 5), np.linspace(0, 20, 3), np.linspace(0, 30, 4))


@pytest.fixture(scope="module")
def feats():
    return synthetic_features(num_classes=6, shots=4, n_val=23, n_test=19, dim=16, noise=3.0, seed=5)


def direct_kl(query, keys, w):
    p = torch.softmax(query.double() @ w.double() / 0.5, 1)
    q = torch.softmax(keys.double() @ w.double() / 0.5, 1)
    return (p[:, None, :] * (p.log()[:, None, :] - q.log()[None])).sum(-1)


@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 100])
def test_kl_chunks_equal_direct_formula_and_fill_every_row(feats, chunk_rows):
    q, k, w = (torch.from_numpy(a) for a in (feats.val_feats, feats.cache_keys, feats.text_weights))
    kl = kl_divergence(q, k, w, chunk_rows)  # 23 rows: the last chunk is partial for 5
    assert kl.shape == (23, 24)
    torch.testing.assert_close(kl.double(), direct_kl(q, k, w), atol=1e-5, rtol=1e-4)
    assert bool((kl.abs().amax(1) > 0).all())  # no row skipped (the original left n mod 100 at zero)


def test_kl_through_features_when_classes_outnumber_dimensions():
    f = synthetic_features(num_classes=40, shots=2, n_val=9, n_test=1, dim=8, noise=3.0, seed=2)
    q, k, w = (torch.from_numpy(a) for a in (f.val_feats, f.cache_keys, f.text_weights))
    assert w.shape[1] > w.shape[0]
    torch.testing.assert_close(kl_divergence(q, k, w, 4).double(), direct_kl(q, k, w), atol=2e-5, rtol=1e-4)


def onehot_sums(values, labels, num_classes):
    """The product the segment sums replace, in float64."""
    return values.double() @ torch.nn.functional.one_hot(labels, num_classes).double()


@pytest.mark.parametrize("labels", [
    [0, 0, 1, 1, 2, 2],  # grouped, k keys per class: reshape-and-sum
    [1, 0, 2, 0, 1, 2],  # shuffled
    [2, 0, 0, 0, 2, 3],  # ragged, class 1 empty
])
def test_class_sums_equal_the_one_hot_product(labels):
    labels = torch.tensor(labels)
    values = torch.randn(5, len(labels), generator=torch.Generator().manual_seed(0))
    got = class_sums(values, labels, 4)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got.double(), onehot_sums(values, labels, 4), atol=1e-6, rtol=1e-6)
    ints = torch.randint(-50, 50, values.shape, generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(class_sums(ints, labels, 4).double(), onehot_sums(ints, labels, 4))  # exact sums


def test_rescaled_sums_equal_rescale_then_class_sums():
    kl = torch.tensor([[2.0, 4.0, 5.0], [3.0, 6.0, 2.5]])
    labels, a_lo, a_hi = torch.tensor([0, 1, 1]), torch.tensor(-0.5), torch.tensor(0.5)
    r = (kl.double() - 2.0) / 4.0 * 1.0 - 0.5  # [2, 6] onto [-0.5, 0.5] by hand
    counts = torch.tensor([1.0, 2.0])
    got = rescaled_sums(class_sums(kl, labels, 2), counts, (kl.amin(), kl.amax()), (a_lo, a_hi))
    torch.testing.assert_close(got.double(), onehot_sums(r, labels, 2))
    flat = rescaled_sums(torch.full((2, 2), 3.0), counts, (torch.tensor(1.0), torch.tensor(1.0)), (a_lo, a_hi))
    assert torch.equal(flat, torch.tensor([[-0.5, -1.0], [-0.5, -1.0]]))


def test_cache_logits_sums_exponentials_per_class():
    p = Problem(torch.zeros(2, 2), *(torch.zeros(3, 2),) * 2, torch.tensor([0, 1, 0]), None, None)
    cache = Cache.of(p, False)
    assert cache.labels.tolist() == [0, 0, 1]  # keys grouped by class, stable
    a = torch.tensor([[1.0, 0.5, 0.0]])  # affinities in that order
    torch.testing.assert_close(cache_logits(1 - a, 2.0, cache),
                               torch.tensor([[1.0 + np.exp(-1.0), np.exp(-2.0)]], dtype=torch.float32))


def test_gda_matches_paper_formula(feats):
    keys, labels, c = feats.cache_keys.astype(np.float64), feats.cache_labels, feats.num_classes
    mus = np.stack([keys[labels == i].mean(0) for i in range(c)])
    centred = keys - mus[labels]
    cov = np.cov(centred.T)
    d = keys.shape[1]
    cov_inv = d * np.linalg.pinv((len(keys) - 1) * cov + np.trace(cov) * np.eye(d))
    want_w = cov_inv @ mus.T
    want_b = np.log(1.0 / c) - 0.5 * np.einsum("nd,dc,nc->n", mus, cov_inv, mus)
    w, b = fit_gda(torch.from_numpy(feats.cache_keys), torch.from_numpy(labels), c)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.numpy(), want_b, rtol=1e-4, atol=1e-4)


def _gda_by_hand(views: np.ndarray, labels: np.ndarray, w_text: np.ndarray, query: np.ndarray,
                 query_zs: np.ndarray, alpha: float) -> np.ndarray:
    """GDA written out: fit on the E x N views V, then Z + alpha (f W_g^T + b)."""
    e, n, d = views.shape
    v = views.reshape(e * n, d).astype(np.float64)
    y = np.tile(labels, e)
    c = w_text.shape[1]
    mu = np.stack([v[y == k].mean(0) for k in range(c)])
    s = np.cov((v - mu[y]).T)
    p = d * np.linalg.pinv((e * n - 1) * s + np.trace(s) * np.eye(d))
    w_g = mu @ p
    b = np.log(1.0 / c) - 0.5 * np.einsum("cd,de,ce->c", mu, p, mu)
    return 100.0 * query_zs @ w_text + alpha * (query @ w_g.T + b)


@pytest.mark.parametrize("corrected", [False, True])
def test_gda_fits_on_every_view_not_on_averaged_keys(feats, corrected):
    sfx = "_corrected" if corrected else ""
    p = Problem.from_features(feats)
    got = torch.cat([z for _, z in gda.logits(p, p.test, corrected, alpha=1.0)]).double().numpy()
    views, labels = getattr(feats, "cache_views" + sfx), feats.cache_labels
    query = getattr(feats, "test_feats" + sfx).astype(np.float64)
    args = (labels, feats.text_weights.astype(np.float64), query, feats.test_feats.astype(np.float64), 1.0)
    np.testing.assert_allclose(got, _gda_by_hand(views, *args), rtol=1e-4, atol=1e-3)
    keys = getattr(feats, "cache_keys" + sfx)[None]
    assert np.abs(got - _gda_by_hand(keys, *args)).max() > 0.1  # averaged keys give other logits


def test_gda_alpha_grid_is_the_official_one():
    assert gda.GDA_ALPHAS.tolist() == [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]


@pytest.mark.parametrize("method", ["gda", "gda-imo"])
def test_gda_without_views_fails_and_says_how_to_get_them(method):
    p = Problem.from_features(synthetic_features(num_classes=4, shots=2, dim=8, views=0))
    with pytest.raises(ClipimoError, match=f"{method} fits on every augmented view.*cache_views / "
                                           "cache_views_corrected.*clipimo run --save-features"):
        METHODS[method](p)


def test_gda_needs_every_class_in_the_support():
    keys = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    with pytest.raises(ClipimoError, match=r"class\(es\) \[2\]"):
        fit_gda(keys, torch.tensor([0, 0, 1, 1]), 3)


def test_registry_names_and_parsing():
    assert set(METHODS) == {"zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo", "proker", "proker-imo",
                            "ape", "ape-imo", "tip-f", "tip-f-imo", "lp++", "lp++-imo", "zs-lp", "zs-lp-imo",
                            "clap", "clap-imo", "tda", "tda-imo"}
    assert parse_methods(" zs, tip ,zs") == ["zs", "tip"]
    with pytest.raises(ClipimoError, match="tip-x"):
        parse_methods("zs,tip-x")
    with pytest.raises(ClipimoError):
        parse_methods("")


def test_zero_shot_accuracy(feats):
    p = Problem.from_features(feats)
    res = METHODS["zs"](p)
    pred = (feats.test_feats @ feats.text_weights).argmax(1)
    assert res.test_acc == pytest.approx(100.0 * (pred == feats.test_labels).mean())
    assert res.hparams == {}


def _perturbed(feats, stream: str):
    """Copy of ``feats`` with the original or corrected query/key features scrambled."""
    rng = np.random.default_rng(0)
    changes = {}
    for key in ("cache_keys", "cache_views", "val_feats", "test_feats"):
        name = key if stream == "original" else f"{key}_corrected"
        x = rng.standard_normal(getattr(feats, name).shape).astype(np.float32)
        changes[name] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return dataclasses.replace(feats, **changes)


@pytest.mark.parametrize("method", ["tip", "tipx", "gda"])
def test_variants_use_the_right_stream(method):
    from clipimo.methods import cache, gda

    feats = synthetic_features(num_classes=6, shots=4, n_val=40, n_test=5, dim=16, noise=2.0, seed=6)
    base = Problem.from_features(feats)
    scrambled = Problem.from_features(_perturbed(feats, "corrected"))

    def outcome(p, corrected):
        if method == "gda":
            return gda.run(p, corrected=corrected)
        return cache.grid_counts(p, corrected, method == "tipx", TINY_GRID).tolist()

    # Scrambling the corrected stream leaves the original variant untouched...
    assert outcome(scrambled, False) == outcome(base, False)
    # ...and changes the IMO variant.
    assert outcome(scrambled, True) != outcome(base, True)
