"""Issue 22, item 7: a tampered or mismatched classifier file, and settings that cannot run, are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, put_image
from safetensors import safe_open

from clipimo.cli.app import main
from clipimo.features.file import feature_arrays, synthetic_features
from clipimo.methods.classifier import META_KEY
from clipimo.utils.fileio import write_safetensors


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clf")
    arrays = feature_arrays(synthetic_features(num_classes=4, shots=2, n_val=12, n_test=12, dim=16))
    meta = {"random_init": True, "backbone": {"model": "m", "weights": "w", "random_init": True},
            "classnames": ["a", "b", "c", "d"]}
    np.savez(folder / "f.npz", **arrays, meta=np.array(json.dumps(meta)))
    assert main(["evaluate", "--features", str(folder / "f.npz"), "--methods", "tip",
                 "--save-classifier", str(folder / "clf.safetensors")]) == 0
    put_image(folder / "img.png")
    return folder


def _tamper(src, dest, tensors=None, meta=None):
    with safe_open(str(src), framework="pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
        recorded = json.loads(fh.metadata()[META_KEY])
    stored.update(tensors or {})
    recorded.update(meta or {})
    write_safetensors(dest, stored, META_KEY, recorded)


@pytest.mark.parametrize("tensors, meta, message", [
    (None, {"classnames": ["a", "b", "c"]}, "its class names (3) do not match the 4 columns of its text weights"),
    ({"text_weights": torch.zeros(8, 4)}, None, "cache_keys (8, 16) does not hold 8-dimensional features like its "
                                                "text weights"),
    ({"cache_labels": torch.full((8,), 7)}, None, "cache_labels run from 7 to 7, outside the 4 classes"),
    ({"cache_labels": torch.zeros(8)}, None, "cache_labels (8,) torch.float32 must be 8 integer labels"),
    (None, {"hparams": {"beta": 1.0}}, "hparams {'beta': 1.0} are not the finite numbers tip needs (alpha, beta)"),
    (None, {"logit_scale": -1.0}, "logit_scale -1.0 and logit_bias 0.0 must be finite numbers, the scale positive"),
    (None, {"method": "tip; rm"}, "unknown method 'tip; rm'"),
    (None, {"options": {"colour": "red"}}, "its method options {'colour': 'red'} are not valid"),
])
def test_tampered_classifier_files_are_one_line(classifier, tmp_path, capsys, tensors, meta, message):
    bad = tmp_path / "bad.safetensors"
    _tamper(classifier / "clf.safetensors", bad, tensors, meta)
    code = main(["predict", "--classifier", str(bad), "--images", str(classifier / "img.png"), "--model", TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"clipimo predict: error: classifier file {bad}: ") and message in err[0]


def test_a_classifier_of_other_feature_width_than_the_model_is_one_line(classifier, capsys):
    # the file's backbone identity is m/w; pretend the model is the one recorded so only the width differs
    bad = classifier / "wide.safetensors"
    _tamper(classifier / "clf.safetensors", bad, meta={"backbone": {}})
    code = main(["predict", "--classifier", str(bad), "--images", str(classifier / "img.png"), "--model", TINY,
                 "--cache-dir", str(classifier / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("clipimo predict: error: the model gives ")
    assert "classifier holds 16-dimensional ones" in err[-1]


@pytest.mark.parametrize("flags, message", [
    (["--shard-size", "-1"], "shard_size (--shard-size) must be an integer >= 1, got -1"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["--device", "meta"], "--device meta: clipimo computes on cpu, cuda[:index] or mps, not on meta"),
])
def test_settings_that_cannot_run_are_one_line(classifier, tmp_path, capsys, flags, message):
    put_image(tmp_path / "imgs" / "cat" / "a.png")
    code = main(["features", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"),
                 "--model", TINY, "--cache-dir", str(tmp_path / "cache"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"clipimo features: error: {message}"
