"""``clipimo evaluate --save-classifier`` + ``clipimo predict``: a tuned classifier applied to new images."""
import dataclasses
import json

import pytest
import torch
from conftest import TINY, make_task
from torch.nn import functional as F

from clipimo import add_adapters, load_clip, save_adapters
from clipimo.cli.app import main
from clipimo.data.items import LabelledImage
from clipimo.errors import ClipimoError
from clipimo.features.extractor import FeatureExtractor
from clipimo.methods.classifier import list_images, load_classifier


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A task, its 2-shot features file and a Tip-IMO classifier saved from it."""
    root = make_task(tmp_path_factory.mktemp("clf"))
    common = ["--model", TINY, "--cache-dir", str(root / "cache"), "--workers", "0"]
    assert main(["features", "--task", str(root / "task"), "--shots", "2", "--seed", "1", "--augment-passes", "2",
                 "--adapter", str(root / "adapter.safetensors"), "--out", str(root / "task.npz"), *common]) == 0
    assert main(["evaluate", "--features", str(root / "task.npz"), "--methods", "tip-imo", "--json",
                 str(root / "res.json"), "--save-classifier", str(root / "clf.safetensors")]) == 0
    return root, common


def hand_tip_logits(clf, f, f_corr):
    """Tip-Adapter on corrected affinities, written out: 100 f W + alpha exp(-beta (1 - f~ K~^T)) L."""
    onehot = F.one_hot(clf.cache_labels, len(clf.classnames)).float()
    affinity = f_corr @ clf.cache_keys_corrected.T
    return 100 * f @ clf.text_weights + clf.hparams["alpha"] * torch.exp(-clf.hparams["beta"] * (1 - affinity)) @ onehot


def test_predictions_match_a_hand_computation_of_the_method(made, capsys):
    root, common = made
    clf = load_classifier(root / "clf.safetensors")
    tuned = json.loads((root / "res.json").read_text())["tip-imo"]
    assert clf.method == "tip-imo" and clf.hparams == tuned["hparams"] and clf.classnames == ["blue", "green", "red"]
    assert clf.backbone["model"] == TINY and clf.provenance["shots"] == 2 and clf.provenance["test_acc"] == tuned["test_acc"]

    out = root / "preds.json"
    assert main(["predict", "--classifier", str(root / "clf.safetensors"), "--images", str(root / "task" / "test"),
                 "--adapter", str(root / "adapter.safetensors"), "--top-k", "2", "--out", str(out), *common]) == 0
    assert "RANDOM-INIT" not in capsys.readouterr().out
    preds = json.loads(out.read_text())
    paths = list_images(root / "task" / "test")
    assert [p["path"] for p in preds] == paths and len(paths) == 9

    ex = FeatureExtractor(load_clip(TINY), adapter=root / "adapter.safetensors", cache_dir=root / "cache2", num_workers=0)
    feats = ex.image_features([LabelledImage(p, 0) for p in paths])
    logits = hand_tip_logits(clf, feats.original, feats.corrected)
    probs = torch.softmax(logits, dim=1)
    assert [p["top_k"][0]["label"] for p in preds] == [clf.classnames[i] for i in logits.argmax(1).tolist()]
    top2 = probs.topk(2, dim=1)
    for p, values, indices in zip(preds, top2.values, top2.indices):
        assert [t["label"] for t in p["top_k"]] == [clf.classnames[i] for i in indices.tolist()]
        assert [t["probability"] for t in p["top_k"]] == pytest.approx(values.tolist(), abs=1e-5)


def test_predict_takes_model_weights_and_adapter_from_the_classifier(made, capsys):
    """No model flags: the classifier file records them; the predictions equal those with the flags."""
    root, common = made
    clf = load_classifier(root / "clf.safetensors")
    assert clf.source == {"model": TINY, "pretrained": None, "adapter": str((root / "adapter.safetensors").resolve())}
    base = ["predict", "--classifier", str(root / "clf.safetensors"), "--images", str(root / "task" / "test"),
            "--cache-dir", str(root / "cache"), "--workers", "0"]
    assert main(base) == 0
    recorded = capsys.readouterr().out
    assert main(base + ["--model", TINY, "--adapter", str(root / "adapter.safetensors")]) == 0
    assert capsys.readouterr().out == recorded and len(recorded.splitlines()) == 1 + 9


def test_predict_refuses_another_adapter_or_backbone_before_loading(made, tmp_path, capsys, monkeypatch):
    root, common = made
    bb = load_clip(TINY)
    add_adapters(bb.model)
    other = tmp_path / "other_adapter.safetensors"
    save_adapters(bb.model, other)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the checks")

    monkeypatch.setattr("clipimo.model.backbone.load_clip", refuse)
    clf_path = root / "clf.safetensors"
    argv = ["predict", "--classifier", str(clf_path), "--images", str(root / "task" / "test"), *common]

    def error(*extra, classifier=None):
        args = list(argv) if classifier is None else [*argv[:2], str(classifier), *argv[3:]]
        assert main(args + list(extra)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "a model was loaded" not in err
        return err

    assert "is not the one the classifier was made with" in error("--adapter", str(other))
    assert error("--model", "ViT-B-32") == (f"clipimo predict: error: the classifier was made with {TINY} "
                                            "(random-init(seed=0)), not --model ViT-B-32: drop --model to use the "
                                            "classifier's")
    assert "not --pretrained openai" in error("--pretrained", "openai")
    assert "--top-k must be >= 1" in error("--top-k", "0")
    assert "a predictions file is written as .csv or .json" in error("--out", str(tmp_path / "p.txt"))
    clf = load_classifier(clf_path)
    gone = tmp_path / "gone.safetensors"
    dataclasses.replace(clf, source={**clf.source, "adapter": str(tmp_path / "moved.safetensors")}).save(gone)
    assert "adapter file " + str(tmp_path / "moved.safetensors") + " is not there" in error(classifier=gone)
    old = tmp_path / "old.safetensors"  # written before classifiers recorded their source
    dataclasses.replace(clf, source={}).save(old)
    assert "needs the corrected stream: pass the adapter file" in error(classifier=old)
    monkeypatch.undo()

    clf = load_classifier(root / "clf.safetensors")
    moved = dataclasses.replace(clf, backbone={**clf.backbone, "weights": "sha256:0123"})
    ex = FeatureExtractor(load_clip(TINY), adapter=root / "adapter.safetensors", cache_dir=root / "cache", num_workers=0)
    with pytest.raises(ClipimoError, match=r"differ in weights"):
        moved.predict(ex, list_images(root / "task" / "test"))


def test_classifier_needs_a_features_file_with_provenance(tmp_path, capsys):
    import numpy as np

    from clipimo.features.file import feature_arrays, synthetic_features

    np.savez(tmp_path / "bare.npz", **feature_arrays(synthetic_features(num_classes=3, shots=1, n_val=6, n_test=6)))
    assert main(["evaluate", "--features", str(tmp_path / "bare.npz"), "--methods", "zs",
                 "--save-classifier", str(tmp_path / "c.safetensors")]) == 2
    assert "records no backbone identity" in capsys.readouterr().err and not (tmp_path / "c.safetensors").exists()


def test_gda_classifier_carries_the_views_and_reproduces_test_accuracy(made, tmp_path):
    from clipimo.features.file import load_features

    root, _ = made
    clf_path = tmp_path / "gda.safetensors"
    assert main(["evaluate", "--features", str(root / "task.npz"), "--methods", "gda-imo", "--json",
                 str(tmp_path / "g.json"), "--save-classifier", str(clf_path)]) == 0
    clf = load_classifier(clf_path)
    feats = load_features(root / "task.npz")
    assert clf.cache_views_corrected.shape == feats.cache_views_corrected.shape  # E passes x N shots x D
    logits = clf.logits(torch.from_numpy(feats.test_feats), torch.from_numpy(feats.test_feats_corrected))
    hits = (logits.argmax(1) == torch.from_numpy(feats.test_labels)).sum().item()
    assert 100.0 * hits / len(feats.test_labels) == json.loads((tmp_path / "g.json").read_text())["gda-imo"]["test_acc"]


def test_every_base_method_says_which_hyper_parameters_a_classifier_holds():
    """A method added to the vocabulary without its entry would make its saved classifiers unreadable."""
    from clipimo.methods.names import BASE_METHODS
    from clipimo.methods.predict import HPARAMS

    assert set(HPARAMS) == set(BASE_METHODS)
