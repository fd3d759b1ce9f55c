"""Tip, Tip-IMO, Tip-X and Tip-X-IMO share one test pass (``cache.run_many``), so each variant's
top-5 and mean per-class recall must still come from its own logits at its own point: checked
against a float64 re-derivation, on a task where the four variants end with four different values
of each metric (a pass that reported one variant's metrics for all would fail)."""
from __future__ import annotations

import imo_reference as ref
import pytest
from test_metrics import numpy_metrics

from clipimo.methods.evaluate import run_methods
from clipimo.methods.registry import CACHE_VARIANTS

# 16 classes (top-5 is informative), a weak class cluster in the corrected stream: on this task
# the KL term and the stream both move the chosen point and every metric.
TASK = {"seed": 0, "num_classes": 16, "shots": 4, "n_val": 32, "n_test": 64, "dim": 32, "cluster": 0.3}


def test_each_shared_variant_reports_its_own_top5_and_recall():
    arrays = ref.contrast_task(**TASK)
    variants = list(CACHE_VARIANTS)
    assert variants == ["tip", "tip-imo", "tipx", "tipx-imo"]
    got = run_methods(ref.as_featureset(arrays), variants)
    want = {}
    for name in variants:
        searched = ref.method(arrays, name)
        wiring = ref.Wiring.imo() if name.endswith("-imo") else ref.Wiring.original()
        logits = ref.fixed_point(arrays, "test", wiring, name.startswith("tipx"), searched["hparams"])
        top1, top5, recall = numpy_metrics(logits, arrays["test_labels"])
        assert top1 == pytest.approx(searched["test_acc"])
        want[name] = {"hparams": searched["hparams"], "val": searched["val_acc"], "top1": top1, "top5": top5,
                      "recall": recall}
    for name in variants:
        assert got[name].hparams == want[name]["hparams"], name
        assert (got[name].val_acc, got[name].test_acc) == pytest.approx((want[name]["val"], want[name]["top1"])), name
        assert got[name].test_top5 == pytest.approx(want[name]["top5"]), name
        assert got[name].test_mean_per_class_recall == pytest.approx(want[name]["recall"]), name
    # Power: four variants, four different values of each metric.
    assert len({round(w["top5"], 6) for w in want.values()}) == len(variants)
    assert len({round(w["recall"], 6) for w in want.values()}) == len(variants)
