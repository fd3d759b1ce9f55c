"""Top-1, top-5 and mean per-class recall against hand computations, and in the evaluate contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipimo.features.file import synthetic_features
from clipimo.methods.evaluate import evaluate_features
from clipimo.methods.metrics import classification_metrics

# 6 queries, 7 classes. Ranks of the true class worked out by hand (ties go to the lower index):
LOGITS = torch.tensor([
    [9., 1, 2, 3, 4, 5, 6],   # y=0: rank 0
    [9., 8, 2, 3, 4, 5, 6],   # y=1: 9 above -> rank 1
    [1., 2, 3, 4, 5, 6, 7],   # y=1: 3..7 above -> rank 5 (top-5 miss)
    [5., 5, 0, 0, 0, 0, 0],   # y=1: tie with class 0 (lower index wins) -> rank 1
    [5., 5, 0, 0, 0, 0, 0],   # y=0: tie with class 1 (higher index) -> rank 0
    [0., 0, 0, 0, 0, 0, 1],   # y=2: class 6 above, classes 0, 1 tie lower -> rank 3
])
LABELS = torch.tensor([0, 1, 1, 1, 0, 2])


def test_metrics_match_hand_computation_in_any_chunking():
    # top-1 hits: rows 0 and 4 -> 2/6; top-5 hits: all but row 2 -> 5/6;
    # recall: class 0 2/2, class 1 0/3, class 2 0/1 -> mean 1/3 (classes 3..6 have no queries).
    expect = {"top1": 100 * 2 / 6, "top5": 100 * 5 / 6, "mean_per_class_recall": 100 / 3}
    whole = classification_metrics([(slice(0, 6), LOGITS)], LABELS)
    chunked = classification_metrics([(slice(0, 4), LOGITS[:4]), (slice(4, 6), LOGITS[4:])], LABELS)
    for got in (whole, chunked):
        assert got == pytest.approx(expect)
    # k is a parameter: with k=1 the "top5" key is top-1 (row 0 rank 1, row 1 rank 0).
    got = classification_metrics([(slice(0, 2), torch.tensor([[1., 0, 2], [3., 0, 1]]))], torch.tensor([0, 0]), k=1)
    assert got["top1"] == pytest.approx(50.0) and got["top5"] == pytest.approx(50.0)
    # Restricted to classes [6, 1, 0]: labels index into that list.
    restricted = classification_metrics([(slice(0, 6), LOGITS)], torch.tensor([1, 1, 2, 1, 2, 0]), classes=[6, 1, 0])
    # cols [6,1,0]: row0 [6,1,9] y=1 (class 1, score 1): 9 and 6 above -> rank 2; row1 [6,8,9] y=1 -> rank 1;
    # row2 [7,2,1] y=2 -> rank 2; row3 [0,5,5] y=1 -> rank 0 (tie with col 2, higher index); row4 [0,5,5] y=2 -> rank 1
    # row5 [1,0,0] y=0 -> rank 0.  top-1: rows 3, 5; with 3 classes every query is a top-5 hit.
    # recall: col 0 1/1, col 1 1/3, col 2 0/2 -> 4/9.
    assert restricted == pytest.approx({"top1": 100 * 2 / 6, "top5": 100.0, "mean_per_class_recall": 100 * 4 / 9})


def numpy_metrics(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """An independent reference: stable descending sort, position of the true class."""
    order = np.argsort(-logits, axis=1, kind="stable")
    rank = np.array([int(np.where(order[i] == labels[i])[0][0]) for i in range(len(labels))])
    recall = [np.mean(rank[labels == c] == 0) for c in np.unique(labels)]
    return 100 * np.mean(rank == 0), 100 * np.mean(rank < 5), 100 * np.mean(recall)


def test_evaluate_adds_top5_and_recall_at_the_chosen_hparams():
    f = synthetic_features(num_classes=9, shots=2, n_val=30, n_test=40, dim=16, seed=3)
    res = evaluate_features(f, "zs,tip-imo")
    zs = 100.0 * f.test_feats.astype(np.float64) @ f.text_weights
    hp = res["tip-imo"]["hparams"]
    affinity = f.test_feats_corrected.astype(np.float64) @ f.cache_keys_corrected.T
    onehot = np.eye(9)[f.cache_labels]
    tip = zs + hp["alpha"] * np.exp(-hp["beta"] * (1 - affinity)) @ onehot
    for name, logits in (("zs", zs), ("tip-imo", tip)):
        top1, top5, recall = numpy_metrics(logits, f.test_labels)
        r = res[name]
        assert r["test_acc"] == pytest.approx(top1)
        assert r["test_top5"] == pytest.approx(top5) and r["test_mean_per_class_recall"] == pytest.approx(recall)
        assert r["test_top5"] >= r["test_acc"]
    assert res["zs"]["test_top5"] < 100.0  # nine classes: top-5 is informative here
