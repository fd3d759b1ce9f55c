"""TDA: the cache replay worked by hand, and the whole stream against a sequential float64
re-derivation (``imo_reference.tda_stream``: per-class lists sorted by entropy, caches updated
before each image's own prediction, cache logits per image)."""
from __future__ import annotations

import imo_reference as ref
import numpy as np
import pytest
import torch
from beyond_features import views_task

from clipimo.errors import ClipimoError
from clipimo.methods import tda
from clipimo.methods.common import MethodOptions, Problem
from clipimo.methods.official import TdaConfig, tda_config
from clipimo.methods.registry import run_method

SMALL = TdaConfig(pos_capacity=2, pos_alpha=3.0, pos_beta=4.0, neg_capacity=1, neg_alpha=0.5, neg_beta=1.5,
                  entropy_band=(0.05, 0.9), mask_band=(0.02, 0.6))


def task(seed: int = 0):
    return views_task(num_classes=5, shots=2, short_class=2, short_shots=1, passes=1, dim=12, n_val=10,
                      n_test=60, seed=seed)


def test_replay_by_hand():
    """Class 0, capacity 2, entropies 0.5, 0.3, 0.4, 0.6, 0.1, 0.1 (positions 0..5) and 0.3 (8); class 1 at 6.
    0 and 1 enter; 2 (0.4 < 0.5, the highest kept) replaces 0; 3 (0.6) is refused; 4 (0.1 < 0.4)
    replaces 2, leaving [4 (0.1), 1 (0.3)]; 5 (0.1 < 0.3) replaces 1. Position 7 is not admitted.
    A later 0.3 would be refused (not strictly below the highest kept, 0.1)."""
    cache = tda.replay([0, 0, 0, 0, 0, 0, 1, 1, 0], [0.5, 0.3, 0.4, 0.6, 0.1, 0.1, 0.9, 0.2, 0.3],
                       [True] * 7 + [False, True], capacity=2, n=9)
    assert cache.members.tolist() == [0, 1, 2, 4, 5, 6]
    assert cache.leave.tolist() == [2, 5, 4, 9, 9, 9]
    assert cache.labels.tolist() == [0, 0, 0, 0, 0, 1]


def test_replay_ties_keep_the_earlier_entry_first():
    """Equal entropies: the stable sort keeps the earlier one first, so the later one is the one
    replaced (capacity 2: entries 0 and 1 tie, 2 is lower and replaces 1)."""
    cache = tda.replay([3, 3, 3], [0.2, 0.2, 0.1], [True] * 3, capacity=2, n=3)
    assert cache.members.tolist() == [0, 1, 2] and cache.leave.tolist() == [3, 2, 3]


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("block", [1, 7, 256])
def test_stream_matches_the_sequential_definition(corrected, block):
    feats = task(seed=1)
    stream = tda.build_stream(Problem.from_features(feats), corrected, SMALL, seed=4)
    want, entered, labels = ref.tda_stream(feats, corrected, SMALL, seed=4)
    assert stream.positive.members.tolist() == entered["pos"]
    assert stream.negative.members.tolist() == entered["neg"]
    assert len(entered["pos"]) > 10 and 0 < len(entered["neg"]) < 60    # both caches do something
    assert bool((stream.positive.leave < 60).any())                      # and some entries get replaced
    got = torch.cat([out for _, out in tda.stream_logits(stream, SMALL, block=block)]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(stream.labels.numpy(), labels)


def test_imo_uses_corrected_keys_and_original_decisions():
    """tda-imo equals the reference with corrected keys / queries; with original keys the final
    logits differ (so a variant reading the wrong stream fails), while the cache decisions agree."""
    feats = task(seed=2)
    stream = tda.build_stream(Problem.from_features(feats), True, SMALL, seed=1)
    want, entered, _ = ref.tda_stream(feats, True, SMALL, seed=1)
    other, other_entered, _ = ref.tda_stream(feats, False, SMALL, seed=1)
    got = torch.cat([out for _, out in tda.stream_logits(stream, SMALL)]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.abs(want - other).max() > 0.05
    assert entered == other_entered and stream.positive.members.tolist() == entered["pos"]


def test_run_reports_null_val_and_the_stream_accuracy():
    feats = task(seed=3)
    result = run_method("tda-imo", Problem.from_features(feats), MethodOptions(seed=2))
    want, entered, labels = ref.tda_stream(feats, True, TdaConfig(), seed=2)
    assert result.val_acc is None and result.hparams == {}
    assert result.test_acc == pytest.approx(100 * np.mean(want.argmax(1) == labels))
    assert result.meta["config"] == "default" and result.meta["order_seed"] == 2
    assert result.meta["positive_entered"] == len(entered["pos"])
    assert result.meta["negative_entered"] == len(entered["neg"])
    assert result.as_dict()["val_acc"] is None


def test_seeds_order_the_stream():
    problem = Problem.from_features(task())
    a, b, c = (tda.build_stream(problem, False, TdaConfig(), seed=s) for s in (1, 1, 2))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.positive.members, b.positive.members)
    first = [torch.cat([o for _, o in tda.stream_logits(s, TdaConfig())]) for s in (a, b)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(a.keys, c.keys)


def test_configs(tmp_path):
    assert tda_config(MethodOptions(tda_config="official", dataset="EuroSAT")).pos_alpha == 4.0
    assert tda_config(MethodOptions(tda_config="official", dataset="ImageNet-Sketch")).pos_beta == 7.45
    assert tda_config(MethodOptions(tda_config="official", dataset="imagenet")).name == "official:imagenet"
    with pytest.raises(ClipimoError, match="no official configuration for dataset 'CUB'"):
        tda_config(MethodOptions(tda_config="official", dataset="CUB"))
    path = tmp_path / "tda.yaml"
    path.write_text("positive: {enabled: true, shot_capacity: 1, alpha: 4.0, beta: 8.0}\n"
                    "negative: {enabled: false, shot_capacity: 3, alpha: 0.1, beta: 1.0,\n"
                    "  entropy_threshold: {lower: 0.1, upper: 0.8}, mask_threshold: {lower: 0.01, upper: 0.5}}\n")
    cfg = tda_config(MethodOptions(tda_config=str(path)))
    assert (cfg.pos_capacity, cfg.pos_alpha, cfg.neg_enabled, cfg.mask_band) == (1, 4.0, False, (0.01, 0.5))
    path.write_text("positive: {enabled: true, alpha: 4.0, beta: 8.0}\nnegative: {}\n")
    with pytest.raises(ClipimoError, match="every key given"):
        tda_config(MethodOptions(tda_config=str(path)))
    with pytest.raises(ClipimoError, match="not default, official or an existing YAML file"):
        tda_config(MethodOptions(tda_config=str(tmp_path / "missing.yaml")))
