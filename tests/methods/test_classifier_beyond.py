"""Saved classifiers of the methods beyond the paper: Tip-F keeps the keys trained with the
evaluated seed and batch (predicting never trains), and an -imo classifier made on a training-free
correction's stream corrects new images with that correction's map, not the adapter."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_task
from test_tipf import reference as tipf_reference
from torch.nn import functional as F

from clipimo import load_clip
from clipimo.cli.app import main
from clipimo.data.items import LabelledImage
from clipimo.features.extractor import FeatureExtractor
from clipimo.features.file import load_features, read_npz
from clipimo.methods import tipf
from clipimo.methods.classifier import list_images, load_classifier


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = make_task(tmp_path_factory.mktemp("clfb"))
    common = ["--model", TINY, "--cache-dir", str(root / "cache"), "--workers", "0"]
    return root, common


def hand_tip_logits(clf, f, f_corr, keys):
    """100 f W + alpha exp(-beta (1 - f~ keys^T)) L, written out."""
    onehot = F.one_hot(clf.cache_labels, len(clf.classnames)).double()
    affinity = f_corr.double() @ keys.double().T
    return (100 * f.double() @ clf.text_weights.double()
            + clf.hparams["alpha"] * torch.exp(-clf.hparams["beta"] * (1 - affinity)) @ onehot)


def test_tipf_classifier_stores_the_keys_of_the_evaluated_seed_and_batch(task, tmp_path, monkeypatch):
    root, common = task
    path = tmp_path / "f.npz"
    assert main(["features", "--task", str(root / "task"), "--shots", "2", "--seed", "1", "--augment-passes", "2",
                 "--adapter", str(root / "adapter.safetensors"), "--out", str(path), *common]) == 0
    clf_path = tmp_path / "tipf.safetensors"
    assert main(["evaluate", "--features", str(path), "--methods", "tip-f-imo", "--seed", "3", "--tipf-batch", "4",
                 "--json", str(tmp_path / "r.json"), "--save-classifier", str(clf_path)]) == 0
    feats = load_features(path)
    want = tipf_reference(feats, True, seed=3, epochs=20, batch=4)  # the hand-written training loop
    clf = load_classifier(clf_path)
    assert clf.trained_keys and clf.provenance["settings"]["seed"] == 3 and clf.provenance["settings"]["batch"] == 4
    assert clf.provenance["settings"]["epoch"] == want["epoch"]
    torch.testing.assert_close(clf.cache_keys_corrected, want["keys"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(clf.cache_keys_corrected, tipf_reference(feats, True, seed=1, epochs=20, batch=4)["keys"])
    np.testing.assert_array_equal(clf.cache_keys.numpy(), feats.cache_keys)  # the other stream is untouched

    # predicting does not train, and reproduces the evaluated test accuracy
    monkeypatch.setattr(tipf, "train_keys", lambda *a, **k: pytest.fail("predict trained Tip-F again"))
    f, fc = torch.from_numpy(feats.test_feats), torch.from_numpy(feats.test_feats_corrected)
    logits = clf.logits(f, fc)
    torch.testing.assert_close(logits.double(), hand_tip_logits(clf, f, fc, want["keys"]), rtol=1e-4, atol=1e-3)
    acc = 100.0 * (logits.argmax(1) == torch.from_numpy(feats.test_labels)).double().mean().item()
    assert acc == pytest.approx(json.loads((tmp_path / "r.json").read_text())["tip-f-imo"]["test_acc"])


def test_imo_classifier_on_isoclip_stream_applies_isoclip_at_predict_time(task, tmp_path, capsys):
    root, common = task
    out = tmp_path / "res"
    assert main(["run", "--datasets", str(root / "task"), "--shots", "2", "--seeds", "1", "--methods", "tip,tip-imo",
                 "--corrections", "isoclip", "--augment-passes", "2", "--out", str(out), "--save-features",
                 "--no-progress", *common]) == 0
    (path,) = (out / "features").glob("*.npz")
    clf_path = tmp_path / "iso.safetensors"
    assert main(["evaluate", "--features", str(path), "--methods", "tip-imo", "--save-classifier", str(clf_path)]) == 0
    clf = load_classifier(clf_path)
    assert clf.correction is not None and clf.correction.name == "isoclip" and not clf.needs_adapter

    # the isoclip map, by hand from the model's projections
    model = load_clip(TINY).model
    proj, text_proj = model.visual.proj.detach().double().numpy(), model.text_projection.detach().double().numpy()
    u = np.linalg.svd(proj @ text_proj.T)[0]
    ktop, kbottom = clf.correction.meta["ktop"], clf.correction.meta["kbottom"]
    uk = u[:, ktop: proj.shape[1] - kbottom]
    iso = np.linalg.pinv(proj) @ uk @ uk.T @ proj

    paths = list_images(root / "task" / "test")
    preds = tmp_path / "p.json"
    # no adapter needed; one given is ignored for the corrected stream
    assert main(["predict", "--classifier", str(clf_path), "--images", str(root / "task" / "test"), "--top-k", "3",
                 "--out", str(preds), *common]) == 0
    ex = FeatureExtractor(load_clip(TINY), adapter=root / "adapter.safetensors", cache_dir=root / "cache",
                          num_workers=0)
    new = ex.image_features([LabelledImage(p, 0) for p in paths])
    corrected = new.original.double().numpy() @ iso
    corrected = torch.from_numpy(corrected / np.linalg.norm(corrected, axis=1, keepdims=True))
    want = torch.softmax(hand_tip_logits(clf, new.original, corrected, clf.cache_keys_corrected), dim=1)
    got = json.loads(preds.read_text())
    for p, row in zip(got, want):
        assert [t["probability"] for t in p["top_k"]] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-5)
    # the adapter's stream gives other probabilities: the correction is what was applied
    adapter = torch.softmax(hand_tip_logits(clf, new.original, new.corrected, clf.cache_keys_corrected), dim=1)
    assert not torch.allclose(adapter, want, atol=1e-3)
    assert torch.allclose(clf.logits(new.original, new.corrected).softmax(1).double(), want, atol=1e-5)

    # a features file without the map is refused in one line
    arrays = read_npz(path)
    bare = tmp_path / "bare.npz"
    np.savez(bare, **{k: v for k, v in arrays.items() if k != "correction_matrix"})
    capsys.readouterr()
    assert main(["evaluate", "--features", str(bare), "--methods", "tip-imo",
                 "--save-classifier", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "the isoclip correction, but the file does not store its map" in err and "Traceback" not in err
