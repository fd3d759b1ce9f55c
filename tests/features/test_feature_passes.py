"""Cache-key augmentation passes (docs/methods.md, "Benchmarks and the few-shot protocol"): the E passes
are different views of each image, both streams of one pass see the same pixels, and the crops
follow the image's bytes, not its path."""
from __future__ import annotations

import shutil

import imo_reference as ref
import torch
from conftest import TINY

from clipimo import FeatureExtractor, add_adapters, load_clip, save_adapters
from clipimo.data.items import LabelledImage


def _extractor(tmp_path, adapter=None):
    return FeatureExtractor(load_clip(TINY), adapter=adapter, cache_dir=tmp_path / "cache", num_workers=0,
                            progress=False)


def test_passes_are_different_views(tmp_path, images):
    ex = _extractor(tmp_path)
    one = ex.image_features(images, passes=1, seed=3).original
    two = ex.image_features(images, passes=2, seed=3).original
    feats = ex.image_features(images, passes=4, seed=3)
    four = feats.original
    views = feats.views  # [E, N, D]: every pair of passes differs on most images (two passes may
    # still coincide on one image: RandomResizedCrop falls back to the same centre crop)
    differs = ((views[:, None] - views[None]).norm(dim=-1) > 1e-3).float().mean(-1)  # [E, E]
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert differs[off_diagonal].min() >= 0.7
    # Identical passes would average to the single-pass feature (normalised mean of equal vectors).
    assert (two - one).norm(dim=1).min() > 1e-3
    assert (four - two).norm(dim=1).min() > 1e-3


def test_both_streams_of_a_pass_see_the_same_pixels(tmp_path, images):
    """With a zero Up layer the corrected stream computes exactly the original function, so the
    streams agree only if each pass feeds both the same crop."""
    bb = load_clip(TINY)
    add_adapters(bb.model)  # lora init: random Down, zero Up
    path = tmp_path / "zero_up.safetensors"
    save_adapters(bb.model, path)
    feats = _extractor(tmp_path, path).image_features(images, passes=3, seed=1)
    torch.testing.assert_close(feats.corrected, feats.original, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.views_corrected, feats.views, rtol=1e-5, atol=1e-6)
    random = tmp_path / "random.safetensors"
    ref.random_adapter_file(TINY, random, seed=1)
    other = _extractor(tmp_path / "b", random).image_features(images, passes=3, seed=1)
    torch.testing.assert_close(other.original, feats.original, rtol=1e-5, atol=1e-6)
    assert (other.corrected - other.original).norm(dim=1).min() > 1e-3


def test_crops_follow_the_image_not_its_folder(tmp_path, images):
    """The same files moved to another folder, renamed and listed in reverse order give the same
    views (to the last bits a row's place in a batch may change): a result does not depend on where
    the dataset lies."""
    moved = []
    for i, item in enumerate(reversed(images)):
        target = tmp_path / "elsewhere" / "deeper" / f"renamed_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.path, target)
        moved.append(LabelledImage(str(target), item.label))
    here = _extractor(tmp_path / "a").image_features(images, passes=3, seed=7)
    there = _extractor(tmp_path / "b").image_features(moved, passes=3, seed=7)
    torch.testing.assert_close(there.views.flip(1), here.views, rtol=0, atol=1e-6)
    other_seed = _extractor(tmp_path / "c").image_features(images, passes=3, seed=8)
    assert (other_seed.views - here.views).norm(dim=-1).max() > 1e-3  # the seed still draws the crops
