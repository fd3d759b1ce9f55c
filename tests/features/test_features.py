import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_images
from torch.nn import functional as F

from clipimo import FeatureExtractor, add_adapters, load_clip, save_adapters
from clipimo.cli.app import main
from clipimo.errors import ClipimoError
from clipimo.utils import fileio as _io
from clipimo.utils import log


@pytest.fixture()
def adapter_file(tmp_path):
    bb = load_clip(TINY)
    add_adapters(bb.model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in bb.model.visual.transformer.resblocks:
            for p in block.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = tmp_path / "adapter.safetensors"
    save_adapters(bb.model, path)
    return path


def extractor(tmp_path, adapter=None, **kw):
    kw.setdefault("num_workers", 0)
    return FeatureExtractor(load_clip(TINY), adapter=adapter, cache_dir=tmp_path / "cache", progress=False, **kw)


def test_both_streams_and_original_matches_plain_open_clip(tmp_path, images, adapter_file):
    ex = extractor(tmp_path, adapter_file, batch_size=4)
    feats = ex.image_features(images)
    plain = load_clip(TINY)
    from PIL import Image

    x = torch.stack([plain.preprocess(Image.open(p).convert("RGB")) for p, _ in images])
    with torch.inference_mode():
        ref = F.normalize(plain.model.encode_image(x), dim=-1)
    torch.testing.assert_close(feats.original, ref, rtol=1e-5, atol=1e-6)
    assert feats.corrected.shape == feats.original.shape
    assert not torch.allclose(feats.corrected, feats.original, atol=1e-3)
    torch.testing.assert_close(feats.corrected.norm(dim=1), torch.ones(len(images)))
    assert feats.labels.tolist() == [lab for _, lab in images]


def test_second_identical_call_encodes_nothing(tmp_path, images, adapter_file, capsys):
    log.configure()  # as clipimo.cli.app does: one log line per image list on this test's stderr
    ex = extractor(tmp_path, adapter_file)
    first = ex.image_features(images, passes=2, seed=5, desc="pool")
    assert ex.encoded_images == 2 * len(images)
    again = ex.image_features(images, passes=2, seed=5, desc="pool")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"pool: {len(images)} images x 2 views encoded in ") and lines[0].endswith("s")
    assert lines[1:] == [f"pool: {len(images)} images x 2 views read from the feature cache"]
    fresh = extractor(tmp_path, adapter_file)
    third = fresh.image_features(images, passes=2, seed=5)
    assert ex.encoded_images == 2 * len(images) and fresh.encoded_images == 0
    assert torch.equal(first.original, again.original) and torch.equal(first.corrected, third.corrected)
    ex.image_features(images, passes=2, seed=6)  # another seed is another key
    assert ex.encoded_images == 4 * len(images)
    no_adapter = extractor(tmp_path)
    plain = no_adapter.image_features(images, passes=2, seed=5)
    assert no_adapter.encoded_images == 2 * len(images) and plain.corrected is None
    torch.testing.assert_close(plain.original, first.original)


def test_changed_image_invalidates_cache(tmp_path, images):
    ex = extractor(tmp_path)
    ex.image_features(images)
    make_images(tmp_path / "imgs", 10, seed=99)  # rewrite the same paths with other pixels
    ex.image_features(images)
    assert ex.encoded_images == 2 * len(images)


def test_augmented_keys_reproducible_and_independent_of_batching(tmp_path, images):
    a = extractor(tmp_path / "a", batch_size=3).image_features(images, passes=3, seed=1)
    b = extractor(tmp_path / "b", batch_size=7, shard_size=4).image_features(images, passes=3, seed=1)
    c = extractor(tmp_path / "c").image_features(images, passes=3, seed=2)
    plain = extractor(tmp_path / "d").image_features(images)
    torch.testing.assert_close(a.original, b.original, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a.original, c.original, atol=1e-4)
    assert not torch.allclose(a.original, plain.original, atol=1e-4)


def test_augmented_features_keep_every_pass_as_a_view(tmp_path, images, adapter_file):
    """views[e, i] is pass e of image i (its own crop, seeded by its bytes), L2-normalised; the key is the
    normalised sum of the unnormalised passes. Checked against encoding each crop by hand."""
    import hashlib
    from pathlib import Path

    from PIL import Image

    from clipimo.data.transforms import cache_augmentation

    ex = extractor(tmp_path, adapter_file, shard_size=4)  # 10 images: 3 shards, concatenated
    feats = ex.image_features(images, passes=3, seed=4)
    assert feats.views.shape == feats.views_corrected.shape == (3, len(images), 64)
    plain = load_clip(TINY)
    aug = cache_augmentation(plain.image_size, plain.mean, plain.std)
    crops = []
    for e in range(3):
        for path, _ in images:
            content = hashlib.sha256(Path(path).read_bytes()).digest()  # seeded by the file's bytes
            blob = hashlib.sha256(f"4:{e}:".encode() + content).digest()
            torch.manual_seed(int.from_bytes(blob[:8], "little") & ((1 << 63) - 1))
            crops.append(aug(Image.open(path).convert("RGB")))
    with torch.inference_mode():
        raw = plain.model.encode_image(torch.stack(crops)).view(3, len(images), -1)
    torch.testing.assert_close(feats.views, F.normalize(raw, dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.original, F.normalize(raw.sum(0), dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(feats.views_corrected, feats.views, atol=1e-3)
    cached = extractor(tmp_path, adapter_file, shard_size=4).image_features(images, passes=3, seed=4)
    assert torch.equal(cached.views, feats.views) and torch.equal(cached.views_corrected, feats.views_corrected)
    assert ex.image_features(images).views is None  # the eval transform has no views


def test_unreadable_images_are_listed_or_skipped(tmp_path, images):
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"not a png")
    missing = str(tmp_path / "imgs" / "gone.png")
    items = images + [(str(broken), 0)]
    ex = extractor(tmp_path)
    with pytest.raises(ClipimoError, match="could not be read:\n  .*broken.png"):
        ex.image_features(items)
    with pytest.raises(ClipimoError, match="do not exist:\n  .*gone.png"):
        ex.image_features(images + [(missing, 1)])
    feats = ex.image_features(items + [(missing, 1)], skip_unreadable=True)
    assert len(feats.paths) == len(images) == len(feats.original)
    assert set(feats.skipped) == {str(broken), missing}


def test_text_weights(tmp_path, adapter_file):
    ex = extractor(tmp_path, adapter_file)
    w = ex.text_weights(["golden_retriever", "cat"], ["a photo of a {}.", "art of the {}."])
    assert w.shape == (64, 2)
    torch.testing.assert_close(w.norm(dim=0), torch.ones(2))
    bb = ex.backbone
    with torch.inference_mode():
        e = F.normalize(bb.model.encode_text(bb.tokenizer(["a photo of a cat.", "art of the cat."])), dim=-1)
    torch.testing.assert_close(w[:, 1], F.normalize(e.mean(0), dim=0), rtol=1e-5, atol=1e-6)
    again = extractor(tmp_path).text_weights(["golden_retriever", "cat"], ["a photo of a {}.", "art of the {}."])
    assert torch.equal(w, again)  # cached, and the adapter does not change text features


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        with _io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    _io.write_bytes(target, b"ok")
    assert target.read_bytes() == b"ok" and list(tmp_path.iterdir()) == [target]


def test_features_cli(tmp_path, images, adapter_file, capsys):
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{['red', 'green', 'blue'][lab]}\n" for p, lab in images))
    out = tmp_path / "f.npz"
    rc = main(["features", "--model", TINY, "--images", str(csv), "--out", str(out), "--adapter", str(adapter_file),
               "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "RANDOM-INIT" in printed.err and "RANDOM-INIT" not in printed.out
    with np.load(out, allow_pickle=False) as z:
        assert z["feats"].shape == z["feats_corrected"].shape == (10, 64)
        assert (float(z["logit_scale"]), float(z["logit_bias"])) == (100.0, 0.0)  # CLIP: Z = 100 f W
        meta = json.loads(str(z["meta"]))
    assert meta["random_init"] is True and meta["classnames"] == ["blue", "green", "red"]
    assert meta["precision"] == "fp32" and meta["passes"] == 0
    rc = main(["features", "--model", TINY, "--images", str(csv), "--out", str(out), "--passes", "2", "--precision",
               "bf16", "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"])
    with np.load(out, allow_pickle=False) as z:
        assert rc == 0 and z["views"].shape == (2, 10, 64) and "views_corrected" not in z.files
        assert json.loads(str(z["meta"]))["precision"] == "bf16-autocast"
    assert main(["features", "--model", TINY, "--images", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2


def test_extractor_refuses_adapters_changed_under_it(tmp_path, images, adapter_file):
    bb = load_clip(TINY)
    plain = FeatureExtractor(bb, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    FeatureExtractor(bb, adapter=adapter_file, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    with pytest.raises(ClipimoError, match="adapters changed"):
        plain.image_features(images)


def test_backbone_mismatch_needs_explicit_permission(tmp_path, images, adapter_file):
    bb = load_clip(TINY)
    bb.model.clipimo_identity = {**bb.identity, "weights": "tag:other"}
    with pytest.raises(ClipimoError, match="was trained on"):
        FeatureExtractor(bb, adapter=adapter_file, cache_dir=tmp_path / "c", num_workers=0)
    bb = load_clip(TINY)
    bb.model.clipimo_identity = {**bb.identity, "weights": "tag:other"}
    ex = FeatureExtractor(bb, adapter=adapter_file, cache_dir=tmp_path / "c", num_workers=0, progress=False,
                          strict_backbone=False)
    assert ex.image_features(images).corrected is not None


def test_sixteen_bit_image_encodes_like_its_eight_bit_version(tmp_path):
    from PIL import Image

    from clipimo.data.items import LabelledImage

    deep = (np.random.default_rng(1).integers(0, 256, (24, 24)) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray((deep // 257).astype(np.uint8)).convert("RGB").save(tmp_path / "eight.png")
    feats = extractor(tmp_path).image_features([LabelledImage(str(tmp_path / "deep.png"), 0),
                                                LabelledImage(str(tmp_path / "eight.png"), 0)])
    assert torch.allclose(feats.original[0], feats.original[1], atol=1e-5)


def test_non_finite_features_are_refused_before_anything_is_written(tmp_path, images):
    ex = extractor(tmp_path)
    ex.backbone.model.encode_image = lambda x: torch.full((len(x), 32), float("nan"))
    with pytest.raises(ClipimoError, match=r"the model gave NaN or infinite features for 10 image\(s\)"):
        ex.image_features(images)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_skip_unreadable_leaving_no_image_is_an_error(tmp_path):
    from clipimo.data.items import LabelledImage

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    items = [LabelledImage(str(tmp_path / n), 0) for n in ("a.png", "b.png")]
    with pytest.raises(ClipimoError, match=r"all 2 image\(s\) are unreadable, e\.g\. .*a\.png .*--skip-unreadable "
                                           r"leaves nothing"):
        extractor(tmp_path).image_features(items, skip_unreadable=True)


def test_precision_is_fp32_unless_bf16_is_asked_for(tmp_path):
    assert extractor(tmp_path).precision == "fp32"
    assert extractor(tmp_path, precision="bf16").precision == "bf16-autocast"
    with pytest.raises(ClipimoError, match="precision must be fp32 or bf16, got 'fp16'"):
        extractor(tmp_path, precision="fp16")
