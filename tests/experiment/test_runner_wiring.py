"""``clipimo run``: the saved features carry each stream under its own key (checked against open_clip
directly) and every cell's -imo results are those of the hand references on those features."""
from __future__ import annotations

import json

import imo_reference as ref
import numpy as np
import pytest
from conftest import TINY

from clipimo.cli.app import main

METHODS = ["zs", "tip", "tip-imo", "tipx", "tipx-imo", "gda", "gda-imo"]
NAMES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner_wiring")
    for split, n in (("train", 3), ("val", 4), ("test", 4)):
        for label, name in enumerate(NAMES):
            ref.class_images(root / "task" / split / name, n, label, seed=len(split))
    ref.random_adapter_file(TINY, root / "adapter.safetensors", seed=7, std=1.0, scale=1.0)
    out = root / "out"
    assert main(["run", "--datasets", str(root / "task"), "--model", TINY, "--adapter", str(root / "adapter.safetensors"),
                 "--shots", "2", "--seeds", "1", "--augment-passes", "2", "--methods", ",".join(METHODS),
                 "--save-features", "--out", str(out), "--cache-dir", str(root / "cache"), "--workers", "0",
                 "--no-progress"]) == 0
    with np.load(next((out / "features").glob("*.npz"))) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
    cell = json.loads(next((out / "cells").glob("*.json")).read_text())
    return root, arrays, cell


@pytest.mark.parametrize("split", ["val", "test"])
def test_saved_streams_equal_open_clip_with_and_without_the_adapter(run_out, split):
    root, arrays, _ = run_out
    paths = sorted(str(p) for p in (root / "task" / split).rglob("*.png"))
    labels = np.array([int(p.split("img_")[1].split("_")[0]) for p in paths])
    original, corrected = ref.encode_streams(TINY, str(root / "adapter.safetensors"), paths)
    saved, saved_corrected = arrays[f"{split}_feats"], arrays[f"{split}_feats_corrected"]
    assert len(saved) == len(paths)
    match = (saved @ original.T).argmax(1)  # rows may come in any order: pair them by content
    assert sorted(match.tolist()) == list(range(len(paths)))
    np.testing.assert_allclose(saved, original[match], atol=1e-5)
    np.testing.assert_allclose(saved_corrected, corrected[match], atol=1e-5)
    np.testing.assert_array_equal(arrays[f"{split}_labels"], labels[match])
    assert np.abs(corrected - original).max() > 0.05  # the adapter changes the features


def test_saved_cache_keys_have_both_streams(run_out):
    _, arrays, _ = run_out
    keys, corrected = arrays["cache_keys"], arrays["cache_keys_corrected"]
    assert keys.shape == corrected.shape == (2 * len(NAMES), keys.shape[1])
    assert np.abs(keys - corrected).max() > 0.05
    np.testing.assert_array_equal(np.sort(arrays["cache_labels"]), np.repeat(np.arange(len(NAMES)), 2))
    views, views_corrected = arrays["cache_views"], arrays["cache_views_corrected"]
    assert views.shape == views_corrected.shape == (2, *keys.shape)  # --augment-passes 2
    assert np.abs(views - views_corrected).max() > 0.05
    assert (np.linalg.norm(views[0] - views[1], axis=1) > 1e-3).mean() >= 0.5  # the passes are different crops


@pytest.mark.parametrize("method", METHODS)
def test_cell_results_equal_the_reference_on_the_saved_features(run_out, method):
    _, arrays, cell = run_out
    got = cell["methods"][method]
    assert {k: got[k] for k in ("test_acc", "val_acc", "hparams")} == ref.method(arrays, method)


def test_the_streams_change_the_cells_answer(run_out):
    """Power of the checks above: taking Z from corrected features, or A from original ones, changes
    the answer of some -imo method (a runner that swapped streams would change them all)."""
    _, arrays, cell = run_out
    for wrong in ref.Wiring.imo().wrong_variants()[:2]:
        assert any(ref.method(arrays, m, wrong) != cell["methods"][m] for m in ("tip-imo", "tipx-imo", "gda-imo")), wrong
