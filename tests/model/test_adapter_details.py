"""Adapter details that change results silently: where the dropout sits, which stream a nested or
interrupted ``adapters_enabled`` leaves behind, and loading a file into a model that already has
adapters (docs/methods.md, "Streams and the adapter")."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY
from torch.nn import functional as F

from clipimo import adapters_enabled, add_adapters, load_adapters, load_clip, save_adapters


def randomise(model, seed: int, std: float = 0.3) -> None:
    """Every adapter tensor random, Up included (a zero Up makes both streams equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            for p in block.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def encode(model, x):
    with torch.no_grad():
        return model.encode_image(x)


def test_dropout_sits_between_relu_and_up(tiny):
    """out = h + MLP(LN2(h)) + s * Up(Dropout(ReLU(Down(h)))): replaying the RNG, the train-mode
    block equals that formula with the dropout mask drawn on the bottleneck activations."""
    add_adapters(tiny.model, bottleneck=16, scale=0.7, dropout=0.5)
    randomise(tiny.model, seed=1)
    block = tiny.model.visual.transformer.resblocks[0]
    block.train()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.manual_seed(123)
        out = block(x)
        q = block.ln_1(x)
        h = x + block.attn(q, q, q, need_weights=False)[0]
        a = block.adapter
        act = torch.relu(h @ a.down.weight.T + a.down.bias)
        torch.manual_seed(123)
        dropped = F.dropout(act, 0.5, training=True)
        expected = h + block.mlp(block.ln_2(h)) + 0.7 * (dropped @ a.up.weight.T + a.up.bias)
        no_dropout = h + block.mlp(block.ln_2(h)) + 0.7 * (act @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, no_dropout, atol=1e-3)  # the dropout did act
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), no_dropout, rtol=1e-5, atol=1e-5)


@pytest.fixture()
def streams(tiny):
    """A model with random adapters, an input, and its two reference outputs."""
    plain = load_clip(TINY).model.eval()
    add_adapters(tiny.model)
    randomise(tiny.model, seed=2)
    model = tiny.model.eval()
    x = torch.randn(2, 3, 32, 32)
    original, corrected = encode(plain, x), encode(model, x)
    assert not torch.allclose(original, corrected, atol=1e-4)
    return model, x, original, corrected


def test_nested_contexts_restore_the_previous_stream(streams):
    model, x, original, corrected = streams
    with adapters_enabled(model, False):
        assert torch.equal(encode(model, x), original)
        with adapters_enabled(model, True):
            torch.testing.assert_close(encode(model, x), corrected)
        assert torch.equal(encode(model, x), original)  # back to the outer choice, not to "on"
        with adapters_enabled(model, False):
            assert torch.equal(encode(model, x), original)
        assert torch.equal(encode(model, x), original)
    torch.testing.assert_close(encode(model, x), corrected)
    with adapters_enabled(model, True):
        with adapters_enabled(model, False):
            assert torch.equal(encode(model, x), original)
        torch.testing.assert_close(encode(model, x), corrected)  # back to "on", not to "off"


def test_context_restores_the_stream_when_an_exception_is_raised(streams):
    model, x, original, corrected = streams
    with adapters_enabled(model, False):
        with pytest.raises(RuntimeError, match="boom"):
            with adapters_enabled(model, True):
                raise RuntimeError("boom")
        assert torch.equal(encode(model, x), original)
    with pytest.raises(KeyError):
        with adapters_enabled(model, False):
            raise KeyError("x")
    torch.testing.assert_close(encode(model, x), corrected)


def test_loading_into_a_model_with_adapters_replaces_them_exactly(tmp_path):
    source = load_clip(TINY).model.eval()
    add_adapters(source, bottleneck=8, scale=0.1, dropout=0.2)
    randomise(source, seed=3)
    path = tmp_path / "a.safetensors"
    save_adapters(source, path)

    target = load_clip(TINY).model.eval()
    add_adapters(target, bottleneck=8, scale=0.03, dropout=0.1)
    randomise(target, seed=4)
    x = torch.randn(2, 3, 32, 32)
    before = encode(target, x)
    load_adapters(target, path)
    load_adapters(target, path)  # loading twice must not stack a second adapter either
    expected = encode(source, x)
    assert not torch.allclose(before, expected, atol=1e-4)
    assert torch.equal(encode(target, x), expected)  # same weights, same scale, one branch per block
    for mine, theirs in zip(target.visual.transformer.resblocks, source.visual.transformer.resblocks):
        assert [n for n, _ in mine.named_children()].count("adapter") == 1
        for (name, p), (_, q) in zip(mine.adapter.state_dict().items(), theirs.adapter.state_dict().items()):
            assert torch.equal(p, q), name
        assert mine.adapter.scale == 0.1 and mine.adapter.dropout.p == 0.2  # the file's config, not the old one
    with adapters_enabled(target, False):
        assert torch.equal(encode(target, x), encode(load_clip(TINY).model.eval(), x))
