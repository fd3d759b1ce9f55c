"""The training-free corrections: the identities of their definitions, shapes, norms, and
that text terms and original features are untouched."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from beyond_features import views_task
from conftest import make_images

from clipimo.errors import ClipimoError
from clipimo.features import corrections as corr
from clipimo.features.extractor import FeatureExtractor


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_isoclip_after_projection_equals_the_pre_projection_formula(tiny):
    model = tiny.model
    x = torch.randn(3, 3, tiny.image_size, tiny.image_size)
    no_proj = copy.deepcopy(model)
    no_proj.visual.proj = None  # open_clip then returns ln_post(CLS), the pre-projection feature
    with torch.no_grad():
        f = model.encode_image(x).double().numpy()
        x_pre = no_proj.encode_image(x).double().numpy()
    proj = model.visual.proj.detach().double().numpy()
    text_proj = model.text_projection.detach().double().numpy()
    np.testing.assert_allclose(x_pre @ proj, f, rtol=1e-4, atol=1e-5)
    # IsoCLIP's own form: U from svd(W_image^T W_text), drop ktop largest and kbottom smallest
    u = np.linalg.svd(proj @ text_proj.T)[0]
    d = proj.shape[1]
    ktop, kbottom = round(150 * d / 512), round(50 * d / 512)
    uk = u[:, ktop: d - kbottom]
    want = unit(x_pre @ (uk @ uk.T @ proj))
    got = corr.isoclip(proj, text_proj)
    assert got.meta == {"ktop": ktop, "kbottom": kbottom} and got.matrix.shape == (d, d)
    np.testing.assert_allclose(got.apply(unit(f)), want, atol=1e-5)


def test_textpca_is_the_projector_on_the_top_half_text_subspace():
    rng = np.random.default_rng(0)
    text = unit(rng.standard_normal((40, 16)) @ np.diag(np.linspace(3, 0.1, 16)))
    p = corr.textpca(text).matrix
    np.testing.assert_allclose(p @ p, p, atol=1e-10)
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    assert round(np.trace(p)) == 8
    centred = torch.from_numpy(text)
    evals, vecs = torch.linalg.eigh(torch.cov(centred.T))  # fit_pca: torch.cov of T^T
    top = vecs[:, torch.argsort(evals, descending=True)[:8]].numpy()
    np.testing.assert_allclose(p, top @ top.T, atol=1e-10)
    # fewer names than kept directions leave part of the subspace arbitrary: refused
    with pytest.raises(ClipimoError, match="give more than 8 class names"):
        corr.textpca(text[:8])


def test_imagepca_removes_the_top_directions_or_whitens():
    rng = np.random.default_rng(1)
    generic = unit(rng.standard_normal((200, 10)) @ np.diag(np.linspace(4, 0.5, 10)) + 0.3)
    mean = generic.mean(0)
    evals, vecs = np.linalg.eigh(np.cov(generic.T))
    abtt = corr.imagepca(generic, "abtt-2")
    assert abtt.meta["ours"] is True and abtt.meta["mode"] == "abtt-2"
    mapped = (generic - mean) @ abtt.matrix
    np.testing.assert_allclose(mapped @ vecs[:, -2:], 0, atol=1e-10)  # top-2 directions gone
    np.testing.assert_allclose(np.linalg.norm(abtt.apply(generic), axis=1), 1, atol=1e-6)
    white = corr.imagepca(generic, "whiten").matrix
    cov = np.cov(generic.T)
    shrunk = cov + 1e-2 * np.trace(cov) / 10 * np.eye(10)
    np.testing.assert_allclose(white @ shrunk @ white, np.eye(10), atol=1e-8)
    with pytest.raises(ClipimoError, match="abtt-K"):
        corr.imagepca(generic, "pca")


def test_corrected_features_replace_only_the_corrected_arrays():
    feats = views_task(seed=2)
    rng = np.random.default_rng(3)
    c = corr.LinearCorrection("test", rng.standard_normal((12, 12)))
    out = corr.corrected_features(feats, c)
    for key in ("cache_keys", "val_feats", "test_feats", "cache_views"):
        np.testing.assert_array_equal(getattr(out, key), getattr(feats, key))
        got = getattr(out, f"{key}_corrected")
        assert got.shape == getattr(feats, key).shape and got.dtype == np.float32
        np.testing.assert_allclose(got, unit(getattr(feats, key).astype(np.float64) @ c.matrix), atol=1e-6)
    np.testing.assert_array_equal(out.text_weights, feats.text_weights)
    assert corr.corrected_features(feats, None) is feats


def test_build_from_a_backbone(tiny, tmp_path):
    extractor = FeatureExtractor(tiny, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    names = tmp_path / "classnames.txt"
    names.write_text("n01440764 tench\nn01443537 goldfish\n" + "".join(f"thing {i}\n" for i in range(38)))
    text = corr.build_correction("textpca", extractor, classnames_file=names)
    assert text.meta["classes"] == 40 and round(np.trace(text.matrix)) == tiny.model.visual.proj.shape[1] // 2
    items = make_images(tmp_path / "generic" / "a", 6)
    pca = corr.build_correction("imagepca", extractor, generic_images=tmp_path / "generic", imagepca_mode="abtt-1")
    assert pca.meta["images"] == len(items)
    iso = corr.build_correction("isoclip", extractor)
    assert corr.fingerprint(iso)["sha256"] != corr.fingerprint(pca)["sha256"]
    assert corr.build_correction("imo", extractor) is None
    with pytest.raises(ClipimoError, match="--textpca-classnames"):
        corr.build_correction("textpca", extractor)
    with pytest.raises(ClipimoError, match="unknown or missing correction"):
        corr.parse_corrections("imo,pca")


def test_features_command_stores_the_corrected_stream_and_records_it(tmp_path, capsys):
    import json

    from conftest import TINY

    from clipimo import load_clip
    from clipimo.cli.app import main

    make_images(tmp_path / "imgs" / "a", 4)
    out = tmp_path / "f.npz"
    argv = ["features", "--model", TINY, "--images", str(tmp_path / "imgs"), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress", "--correction", "isoclip"]
    assert main(argv) == 0
    assert "original+corrected (isoclip)" in capsys.readouterr().out
    with np.load(out) as npz:
        feats, fixed, meta = npz["feats"], npz["feats_corrected"], json.loads(str(npz["meta"]))
    want = corr.isoclip(*corr.projections(load_clip(TINY).model))
    np.testing.assert_allclose(fixed, want.apply(feats), atol=1e-6)
    assert meta["correction"] == corr.fingerprint(want) and meta["correction"]["name"] == "isoclip"
    assert main(argv[:-1] + ["textpca"]) == 2
    assert "--textpca-classnames" in capsys.readouterr().err
