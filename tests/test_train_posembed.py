"""Positional-embedding interpolation and any-size input for the ViT image tower."""
from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from clipimo import add_adapters, load_clip
from clipimo.train.posembed import crop_sizes, disable_any_input_size, enable_any_input_size, interpolate_pos_embed

from conftest import TINY
from test_train_utils import one_torch_thread  # noqa: F401  (autouse fixture)


def test_interpolate_keeps_class_token_and_identity():
    pos = torch.randn(1 + 4 * 4, 8)
    assert interpolate_pos_embed(pos, 4, 4) is pos
    out = interpolate_pos_embed(pos, 4, (2, 3))
    assert out.shape == (1 + 6, 8)
    assert torch.equal(out[0], pos[0])
    batched = interpolate_pos_embed(pos[None], (4, 4), (2, 3))
    assert torch.equal(batched[0], out)


def test_interpolate_properties():
    g = 6
    ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij")
    const = torch.cat([torch.zeros(1, 3), torch.full((g * g, 3), 0.7)])
    torch.testing.assert_close(interpolate_pos_embed(const, g, 4)[1:], torch.full((16, 3), 0.7))
    # a pattern varying along x only stays constant along y after resampling, for any new grid
    field = torch.cat([torch.zeros(1, 1), torch.sin(xs).reshape(-1, 1)])
    out = interpolate_pos_embed(field, g, (3, 5))[1:].reshape(3, 5)
    torch.testing.assert_close(out, out[:1].expand(3, 5))
    # resampling commutes with mirroring the grid
    pos = torch.randn(1 + g * g, 4)
    flip = torch.cat([pos[:1], pos[1:].reshape(g, g, 4).flip(1).reshape(-1, 4)])
    a = interpolate_pos_embed(pos, g, 4)[1:].reshape(4, 4, 4).flip(1)
    b = interpolate_pos_embed(flip, g, 4)[1:].reshape(4, 4, 4)
    torch.testing.assert_close(a, b)
    # bicubic, not bilinear: matches torch's bicubic on the grid image
    ref = nn.functional.interpolate(pos[1:].T.reshape(1, 4, g, g), size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(interpolate_pos_embed(pos, g, 4)[1:], ref.reshape(4, 16).T)


def test_native_size_is_bitwise_the_usual_forward():
    plain = load_clip(TINY).model
    bb = load_clip(TINY)
    add_adapters(bb.model)
    visual = enable_any_input_size(bb.model)
    assert enable_any_input_size(bb.model) is visual  # idempotent
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb.model.encode_image(x), plain.encode_image(x))
        bb.model.encode_image(torch.randn(2, 3, 16, 16))  # another size in between changes nothing
        assert torch.equal(bb.model.encode_image(x), plain.encode_image(x))
    assert isinstance(visual.positional_embedding, nn.Parameter)
    assert torch.equal(visual.positional_embedding, plain.visual.positional_embedding)
    disable_any_input_size(bb.model)
    with pytest.raises(RuntimeError):
        bb.model.encode_image(torch.randn(2, 3, 16, 16))


def test_small_input_equals_a_model_built_with_the_interpolated_embedding():
    bb = load_clip(TINY)
    visual = enable_any_input_size(bb.model)
    x = torch.randn(2, 3, 24, 16)  # 3 x 2 patches of 8 px, non-square
    reference = copy.deepcopy(visual)
    disable_any_input_size(reference)
    reference.positional_embedding = nn.Parameter(interpolate_pos_embed(visual.positional_embedding, 4, (3, 2)))
    with torch.no_grad():
        torch.testing.assert_close(visual(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("image_size,patch,sizes", [
    (28, 14, [14, 28, 42]),
    (48, 16, [16, 32, 48, 64]),
    ((32, 48), 8, [8, 24, 40]),
])
def test_any_patch_size_and_grid(image_size, patch, sizes):
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=image_size, patch_size=patch, width=32, layers=1, heads=2, mlp_ratio=2.0,
                            output_dim=16).eval()
    native_in = torch.randn(1, 3, *((image_size,) * 2 if isinstance(image_size, int) else image_size))
    with torch.no_grad():
        before = vit(native_in)
        enable_any_input_size(vit)
        assert torch.equal(vit(native_in), before)
        for s in sizes:
            assert vit(torch.randn(2, 3, s, s)).shape == (2, 16)


def test_gradients_reach_adapters_through_small_crops_and_deepcopy():
    bb = load_clip(TINY)
    add_adapters(bb.model, dropout=0.0)
    enable_any_input_size(bb.model)
    clone = copy.deepcopy(bb.model)
    out = clone.visual(torch.randn(2, 3, 16, 16)).sum()
    out.backward()
    grads = [b.adapter.up.weight.grad for b in clone.visual.transformer.resblocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(b.adapter.up.weight.grad is None for b in bb.model.visual.transformer.resblocks)


def test_crop_sizes():
    assert crop_sizes(224, 16) == (224, 96)
    assert crop_sizes(224, 14) == (224, 96)
    assert crop_sizes(224, 32) == (224, 96)
    assert crop_sizes(336, 14) == (336, 144)
    assert crop_sizes(32, 8) == (32, 16)
    assert crop_sizes(64, 16) == (64, 32)
    assert crop_sizes(32, 8, local_size=24, global_size=40) == (40, 24)
