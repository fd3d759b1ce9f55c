"""Positional-embedding interpolation and any-size input for the ViT image tower."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY
from open_clip.transformer import VisionTransformer
from torch import nn

from clipimo import add_adapters, load_clip
from clipimo.train.posembed import crop_sizes, disable_any_input_size, enable_any_input_size, interpolate_pos_embed

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _cubic_weights(t: float) -> list[float]:
    """Keys' cubic convolution kernel (a = -0.75, as torch's bicubic) at offsets 1+t, t, 1-t, 2-t."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def _dino_resize_1d(values: torch.Tensor, new: int) -> torch.Tensor:
    """DINO's resize along dim 0, written out: output i samples the old grid g at
    (i + 0.5) * g / (new + 0.1) - 0.5 (scale_factor = (new + 0.1) / g), border rows repeated."""
    g = values.shape[0]
    rows = []
    for i in range(new):
        src = (i + 0.5) * g / (new + 0.1) - 0.5
        base = int(torch.floor(torch.tensor(src)))
        weights = _cubic_weights(src - base)
        taps = [values[min(max(base + k, 0), g - 1)] for k in (-1, 0, 1, 2)]
        rows.append(sum(w * v for w, v in zip(weights, taps)))
    return torch.stack(rows)


@pytest.mark.parametrize("old, new", [(14, 6), (4, (2, 3)), (7, 3)])
def test_interpolation_is_dinos_scale_factor_formula(old, new):
    torch.manual_seed(0)
    nh, nw = (new, new) if isinstance(new, int) else new
    pos = torch.randn(1 + old * old, 5, dtype=torch.float64)
    grid = pos[1:].reshape(old, old, 5)
    expected = _dino_resize_1d(_dino_resize_1d(grid, nh).transpose(0, 1), nw).transpose(0, 1)
    got = interpolate_pos_embed(pos.float(), old, new)[1:].reshape(nh, nw, 5)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)



def test_scale_factor_resize_differs_from_size_resize_by_several_percent():
    """14 -> 6 on a smooth (sin-cos) embedding: the previous ``size=`` resize was ~4% off."""
    g, d = 14, 64
    ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij")
    freqs = 1 / 10000 ** (torch.arange(d // 4) / (d // 4))
    grid = torch.cat([f(c[..., None] * freqs) for c in (xs, ys) for f in (torch.sin, torch.cos)], -1)
    got = interpolate_pos_embed(torch.cat([torch.zeros(1, d), grid.reshape(-1, d)]), g, 6)[1:]
    by_size = nn.functional.interpolate(grid.permute(2, 0, 1)[None], size=(6, 6), mode="bicubic", align_corners=False)
    rel = (by_size[0].permute(1, 2, 0).reshape(36, d) - got).norm() / got.norm()
    assert 0.02 < rel < 0.1, rel


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
