"""The cost model announces the slow methods of a cell, and only those, before they run."""
from __future__ import annotations

import logging

import pytest

from clipimo.features.file import synthetic_features
from clipimo.methods import cost
from clipimo.methods.evaluate import run_methods

IMAGENET_16 = cost.Sizes(classes=1000, keys=16_000, val=10_000, test=50_000, dim=512, views=10)


def test_zero_shot_seconds_are_its_product_over_the_rate():
    s = cost.Sizes(classes=7, keys=21, val=30, test=50, dim=16)
    flops = 2.0 * (30 + 50) * 16 * 7
    mm_rate, el_rate = cost.RATES["cpu"]
    want = flops / (mm_rate * 4 / 2) + (30 + 50) * 7 / (el_rate * 4 / 2)
    assert cost.seconds("zs", s, "cpu", threads=4) == pytest.approx(want)


def test_imagenet_16_shot_flags_the_slow_methods_and_suggests_cuda():
    lines = cost.slow_cell_lines(["zs", "tip", "tip-imo", "gda", "proker", "ape-imo", "tip-f"], IMAGENET_16)
    named = [line.split(":")[0] for line in lines]
    assert named == ["proker", "ape-imo", "tip-f"]  # Tip and GDA run ImageNet in about a minute
    assert all("--device cuda" in line and "1,000 classes, 16,000 keys" in line for line in lines)
    assert cost.slow_cell_lines(["ape", "tip-f"], IMAGENET_16, "cuda") == []  # seconds on a GPU


def test_estimates_grow_with_the_sizes_that_drive_them():
    small = cost.Sizes(classes=100, keys=1600, val=1000, test=2000, dim=512, views=10)
    for method in ("tip", "ape", "proker", "tip-f", "gda"):
        bigger = cost.seconds(method, cost.Sizes(100, 3200, 1000, 2000, 512, 10))
        assert bigger > cost.seconds(method, small), method
    assert cost.slow_cell_lines(["zs", "tip", "gda", "ape"], small) == []
    assert cost.seconds("ape", small, "cuda") < cost.seconds("ape", small, "cpu")


def test_run_methods_logs_the_line_before_the_cell(caplog, monkeypatch):
    monkeypatch.setattr(cost, "SLOW_SECONDS", 0.0)
    feats = synthetic_features(4, 1, 6, 6, 8, views=2)
    with caplog.at_level(logging.WARNING, logger="clipimo"):
        run_methods(feats, "zs,gda")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("zs: estimated") for m in messages)
    assert any(m.startswith("gda: estimated") and "--device cuda" in m for m in messages)


def test_every_registered_method_has_a_cost_model():
    """A method added to the vocabulary without a cost model would stop every run at its first cell."""
    from clipimo.methods.names import METHOD_NAMES

    s = cost.Sizes(classes=100, keys=1600, val=1000, test=2000, dim=512, views=10)
    for method in METHOD_NAMES:
        mm, el = cost.work(method, s)
        assert mm > 0 and el > 0, method
