"""IMO adapters on open_clip's timm towers (SigLIP-style ``Block``, EVA02-style ``EvaBlock``), tiny random init."""
import json

import pytest
import torch
from conftest import TINY, randomise_adapters
from timm.layers import DropPath, LayerScale
from timm.models.vision_transformer import ResPostBlock

from clipimo import adapters_enabled, add_adapters, load_adapters, load_clip, save_adapters
from clipimo.errors import ClipimoError
from clipimo.model.adapter import read_adapter_file

SIGMOID, EVA = "clipimo-tiny-sigmoid", "clipimo-tiny-eva"


def _adapter_by_hand(a, h):
    return a.scale * (torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)


@pytest.mark.parametrize("name", [SIGMOID, EVA])
def test_off_stream_is_plain_open_clip_bitwise(name):
    plain, bb = load_clip(name).model, load_clip(name)
    x = torch.randn(3, 3, 32, 32)
    add_adapters(bb.model)
    with torch.no_grad():
        reference = plain.encode_image(x)
        assert torch.equal(bb.model.encode_image(x), reference)  # zero-init Up
        randomise_adapters(bb.model)
        with adapters_enabled(bb.model, False):
            assert torch.equal(bb.model.encode_image(x), reference)
        corrected = bb.model.encode_image(x)
    assert not torch.allclose(corrected, reference)
    assert all(hasattr(b.adapter, n) for b in bb.model.visual.trunk.blocks for n in ("down", "up", "scale"))


def test_siglip_block_with_layer_scale_and_drop_path_matches_the_formula():
    """h includes the block's own layer scale and drop-path (the same random mask, train mode)."""
    bb = load_clip(SIGMOID)
    block = bb.model.visual.trunk.blocks[0]
    block.ls1, block.ls2 = LayerScale(64, 0.5), LayerScale(64, 2.0)
    block.drop_path1, block.drop_path2 = DropPath(0.5), DropPath(0.5)
    add_adapters(bb.model, bottleneck=16, scale=0.7, dropout=0.0)
    randomise_adapters(bb.model, std=0.3)
    block.train()
    x = torch.randn(4, 16, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        out = block(x)
        torch.manual_seed(3)
        h = x + block.drop_path1(0.5 * block.attn(block.norm1(x)))
        mlp = block.drop_path2(2.0 * block.mlp(block.norm2(h)))
        expected = h + mlp + _adapter_by_hand(block.adapter, h)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, h + mlp)


def test_eva_block_with_gamma_matches_the_formula():
    bb = load_clip(EVA)
    add_adapters(bb.model, bottleneck=8, scale=0.4)
    randomise_adapters(bb.model, std=0.3)
    block = bb.model.visual.trunk.blocks[1]
    assert block.gamma_1 is not None and block.gamma_2 is not None
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        out = block(x)
        h = x + block.gamma_1 * block.attn(block.norm1(x))
        expected = h + block.gamma_2 * block.mlp(block.norm2(h)) + _adapter_by_hand(block.adapter, h)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [SIGMOID, EVA])
def test_save_load_round_trip(tmp_path, name):
    bb = load_clip(name)
    add_adapters(bb.model, bottleneck=8, scale=0.1, dropout=0.2)
    randomise_adapters(bb.model)
    path = tmp_path / "a.safetensors"
    save_adapters(bb.model, path)
    tensors, meta = read_adapter_file(path)
    assert meta["config"] == {"bottleneck": 8, "scale": 0.1, "dropout": 0.2, "init": "lora", "width": 64,
                              "layers": 2, "tower": "timm"}
    assert sorted(tensors) == sorted(f"blocks.{i}.{m}.{p}" for i in range(2) for m in ("down", "up") for p in ("weight", "bias"))
    fresh = load_clip(name)
    load_adapters(fresh.model, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.model.encode_image(x), bb.model.encode_image(x))
    assert fresh.model.visual.trunk.blocks[1].adapter.scale == 0.1


def test_width_and_tower_mismatch_errors(tmp_path):
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    def wide(pretrained=False, **kw):
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=2, class_token=False,
                                 global_pool="map", num_classes=kw["num_classes"])

    wide.__name__ = "clipimo_test_wide_vit"
    register_model(wide)
    from importlib import resources

    cfg = json.loads(resources.files("clipimo.model").joinpath("configs", f"{SIGMOID}.json").read_text())
    cfg["vision_cfg"]["timm_model_name"] = "clipimo_test_wide_vit"
    (tmp_path / "wide.json").write_text(json.dumps(cfg))
    narrow = load_clip(SIGMOID)
    add_adapters(narrow.model)
    good = tmp_path / "a.safetensors"
    save_adapters(narrow.model, good)
    with pytest.raises(ClipimoError, match="width 64 with 2 blocks, but this model has width 96 with 2 blocks"):
        load_adapters(load_clip(str(tmp_path / "wide.json")).model, good, strict_backbone=False)
    native = load_clip(TINY)
    with pytest.raises(ClipimoError, match="made for a timm image tower .* in a open_clip-vit tower"):
        load_adapters(native.model, good, strict_backbone=False)


def test_post_norm_timm_block_is_refused():
    bb = load_clip(SIGMOID)
    bb.model.visual.trunk.blocks[1] = ResPostBlock(64, 2)
    with pytest.raises(ClipimoError, match="block 1 is a ResPostBlock"):
        add_adapters(bb.model)


def test_missing_timm_or_transformers_gives_an_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a))
    with pytest.raises(ClipimoError, match=r"needs the 'timm' package: pip install 'clipimo\[timm\]'"):
        load_clip(SIGMOID)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    with pytest.raises(ClipimoError, match=r"ViT-B-16-SigLIP needs the 'transformers' package"):
        load_clip("ViT-B-16-SigLIP")


def test_logit_scale_and_bias_follow_the_model():
    sig = load_clip(SIGMOID)
    scale, bias = sig.logit_scale_bias
    assert scale == pytest.approx(float(torch.exp(sig.model.logit_scale.detach()))) and scale != 100.0
    assert bias == float(sig.model.logit_bias.detach()) == -10.0
    assert load_clip(TINY).logit_scale_bias == (100.0, 0.0)  # CLIP's fixed 100
