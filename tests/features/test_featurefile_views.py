"""The optional features-file keys: per-pass cache views and the model's zero-shot logit scale and bias."""
import numpy as np
import pytest

from clipimo.errors import ClipimoError
from clipimo.features.file import feature_arrays, load_features, save_features, synthetic_features, validate_features
from clipimo.methods import zeroshot
from clipimo.methods.common import Problem


def _unit(x, axis=-1):
    return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)


def _with_views(passes=3):
    arrays = feature_arrays(synthetic_features(num_classes=4, shots=2, dim=8))
    n, d = arrays["cache_keys"].shape
    rng = np.random.default_rng(0)
    arrays["cache_views"] = _unit(rng.standard_normal((passes, n, d)))
    arrays["cache_views_corrected"] = _unit(rng.standard_normal((passes, n, d)))
    return arrays


def test_views_round_trip(tmp_path):
    arrays = _with_views()
    save_features(tmp_path / "f.npz", arrays)
    feats = load_features(tmp_path / "f.npz")
    assert feats.has_views
    np.testing.assert_array_equal(feats.cache_views, arrays["cache_views"])
    problem = Problem.from_features(feats)
    assert problem.views(True, "gda").shape == (3, *arrays["cache_keys"].shape)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("cache_views_corrected"), "come as a pair"),
    (lambda a: a.update(cache_views=a["cache_views"][:, :-1]), "expected [E,"),
    (lambda a: a.update(cache_views=2 * a["cache_views"]), "not L2-normalised"),
    (lambda a: a.update(logit_scale=np.array([1.0, 2.0])), "one finite number"),
])
def test_bad_optional_keys_are_named(change, message):
    arrays = _with_views()
    change(arrays)
    with pytest.raises(ClipimoError, match="cache_views|logit_scale") as err:
        validate_features(arrays, "f.npz")
    assert message in str(err.value) and "f.npz" in str(err.value)


def test_missing_views_error_says_how_to_get_them():
    problem = Problem.from_features(synthetic_features(num_classes=4, shots=2, dim=8, views=0))
    with pytest.raises(ClipimoError, match="gda.*cache_views.*clipimo run --save-features"):
        problem.views(False, "gda")


def test_zero_shot_follows_logit_scale_and_bias():
    arrays = feature_arrays(synthetic_features(num_classes=5, shots=2, dim=8))
    arrays.update(logit_scale=np.float32(10.0), logit_bias=np.float32(-3.0))
    problem = Problem.from_features(validate_features(arrays))
    (rows, z), = zeroshot.logits(problem, problem.test)
    expected = 10.0 * arrays["test_feats"].astype(np.float64) @ arrays["text_weights"] - 3.0
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-5, atol=1e-4)
    default = Problem.from_features(synthetic_features(num_classes=5, shots=2, dim=8))
    assert (default.logit_scale, default.logit_bias) == (100.0, 0.0)
