import json

import pytest
import torch
from conftest import TINY, randomise_adapters
from safetensors.torch import save_file

from clipimo import adapters_enabled, add_adapters, load_adapters, load_clip, save_adapters
from clipimo.errors import ClipimoError
from clipimo.model.adapter import adapter_parameters, read_adapter_file


def test_off_stream_and_zero_init_equal_plain_open_clip(tiny):
    plain = load_clip(TINY).model
    x = torch.randn(3, 3, 32, 32)
    add_adapters(tiny.model)
    with torch.no_grad():
        reference = plain.encode_image(x)
        assert torch.equal(tiny.model.encode_image(x), reference)  # zero-init Up: identical
        randomise_adapters(tiny.model)
        with adapters_enabled(tiny.model, False):
            assert torch.equal(tiny.model.encode_image(x), reference)  # bitwise, adapters bypassed
        corrected = tiny.model.encode_image(x)
    assert not torch.allclose(corrected, reference)


def test_block_matches_the_formula(tiny):
    add_adapters(tiny.model, bottleneck=16, scale=0.7)
    randomise_adapters(tiny.model, std=0.3)
    block = tiny.model.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        out = block(x)
        q = block.ln_1(x)
        h = x + block.attn(q, q, q, need_weights=False)[0]
        a = block.adapter
        expected = h + block.mlp(block.ln_2(h)) + 0.7 * (torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, h + block.mlp(block.ln_2(h)))


def test_only_adapters_trainable_and_param_count(tiny):
    add_adapters(tiny.model, bottleneck=64)
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    width, layers = 64, 2
    assert sum(p.numel() for p in adapter_parameters(tiny.model)) == layers * (2 * width * 64 + 64 + width)
    a = tiny.model.visual.transformer.resblocks[0].adapter
    assert (a.up.weight == 0).all() and (a.down.bias == 0).all() and a.down.weight.abs().sum() > 0
    with pytest.raises(ClipimoError, match="already"):
        add_adapters(tiny.model)


def test_vit_b16_adapter_size():
    """Checks the ~1.2M adapter parameters of the paper on the real architecture (random init, no weights)."""
    bb = load_clip("ViT-B-16")
    add_adapters(bb.model)
    assert sum(p.numel() for p in adapter_parameters(bb.model)) == 12 * (2 * 768 * 64 + 64 + 768)  # 1,189,632


def test_dropout_only_in_train_mode(tiny):
    add_adapters(tiny.model, dropout=0.5)
    randomise_adapters(tiny.model)
    x = torch.randn(2, 3, 32, 32)
    tiny.model.eval()
    with torch.no_grad():
        assert torch.equal(tiny.model.encode_image(x), tiny.model.encode_image(x))
        tiny.model.train()
        torch.manual_seed(0)
        first = tiny.model.encode_image(x)
        second = tiny.model.encode_image(x)
    assert not torch.equal(first, second)


def test_stream_context_restores_state(tiny):
    add_adapters(tiny.model)
    with adapters_enabled(tiny.model, False):
        assert not any(b.adapter.enabled for b in tiny.model.visual.transformer.resblocks)
    assert all(b.adapter.enabled for b in tiny.model.visual.transformer.resblocks)


def test_save_load_round_trip(tmp_path, tiny):
    add_adapters(tiny.model, bottleneck=8, scale=0.1, dropout=0.2)
    randomise_adapters(tiny.model)
    path = tmp_path / "a.safetensors"
    save_adapters(tiny.model, path)
    tensors, meta = read_adapter_file(path)
    assert meta["config"] == {"bottleneck": 8, "scale": 0.1, "dropout": 0.2, "init": "lora", "width": 64, "layers": 2,
                              "tower": "open_clip-vit"}
    assert meta["backbone"]["model"] == TINY
    assert all(k.startswith("resblocks.") for k in tensors)  # adapter tensors only
    fresh = load_clip(TINY)
    load_adapters(fresh.model, path)  # adds adapters when missing
    for a, b in zip(tiny.model.visual.transformer.resblocks, fresh.model.visual.transformer.resblocks):
        for (n, p), (_, q) in zip(a.adapter.state_dict().items(), b.adapter.state_dict().items()):
            assert torch.equal(p, q), n
        assert b.adapter.scale == 0.1 and b.adapter.dropout.p == 0.2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.model.encode_image(x), tiny.model.encode_image(x))


def test_load_errors(tmp_path, tiny):
    add_adapters(tiny.model)
    good = tmp_path / "a.safetensors"
    save_adapters(tiny.model, good)
    wide = tmp_path / "wide.json"
    from importlib import resources

    cfg = json.loads(resources.files("clipimo.model").joinpath("configs", f"{TINY}.json").read_text())
    cfg["vision_cfg"]["width"] = 96
    wide.write_text(json.dumps(cfg))
    other = load_clip(str(wide))
    with pytest.raises(ClipimoError, match="width 64 with 2 blocks, but this model has width 96"):
        load_adapters(other.model, good)
    with pytest.raises(ClipimoError, match="does not exist"):
        load_adapters(tiny.model, tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(ClipimoError, match="junk.safetensors"):
        load_adapters(tiny.model, junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ClipimoError, match="not a clipimo adapter"):
        load_adapters(tiny.model, foreign)


def test_backbone_identity_mismatch(tmp_path, tiny):
    add_adapters(tiny.model)
    path = tmp_path / "a.safetensors"
    save_adapters(tiny.model, path)
    other = load_clip(TINY)
    other.model.clipimo_identity = {**other.identity, "weights": "tag:something-else"}
    with pytest.raises(ClipimoError, match="was trained on"):
        load_adapters(other.model, path)
    load_adapters(other.model, path, strict_backbone=False)


def test_resnet_tower_is_refused(tmp_path):
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "tiny-rn.json"
    path.write_text(json.dumps(cfg))
    bb = load_clip(str(path))
    with pytest.raises(ClipimoError, match="ViT image tower.*ModifiedResNet"):
        add_adapters(bb.model)


def test_non_finite_weights_and_malformed_metadata_are_refused_at_load(tmp_path, tiny):
    from clipimo.model.adapter import ADAPTER_FORMAT, ADAPTER_FORMAT_VERSION, adapter_config, adapter_state
    from clipimo.utils import fileio as _io

    add_adapters(tiny.model)
    with torch.no_grad():
        tiny.model.visual.transformer.resblocks[1].adapter.up.weight[0, 0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_adapters(tiny.model, nan)
    fresh = load_clip(TINY)
    with pytest.raises(ClipimoError, match=r"nan\.safetensors: tensor\(s\) resblocks\.1\.up\.weight hold NaN or infinite"):
        load_adapters(fresh.model, nan)
    assert not hasattr(fresh.model.visual.transformer.resblocks[0], "adapter")  # nothing half-loaded

    bad = tmp_path / "bad_meta.safetensors"
    meta = {"format": ADAPTER_FORMAT, "version": ADAPTER_FORMAT_VERSION,
            "config": {**adapter_config(tiny.model), "width": "wide", "scale": None}}
    _io.write_safetensors(bad, adapter_state(tiny.model), "clipimo", meta)
    with pytest.raises(ClipimoError, match=r"bad_meta\.safetensors: malformed metadata: .*bad or missing: width, scale"):
        load_adapters(load_clip(TINY).model, bad)
