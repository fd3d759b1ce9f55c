"""Tiny random-init timm image towers, shaped like SigLIP's and EVA02's, for tests and the demo.

open_clip builds a timm tower from a timm model name alone, so the tiny sizes live in timm
entrypoints registered here; the bundled configs ``clipimo-tiny-sigmoid`` (SigLIP-style, with a logit bias;
open_clip reserves names containing 'siglip' for its SentencePiece tokenizer) and ``clipimo-tiny-eva``
name them. The EVA-style tower has layer scale (``gamma_1``/``gamma_2``) so that path is exercised.
"""
from __future__ import annotations

TINY_TIMM_MODELS = ("clipimo_tiny_siglip_vit", "clipimo_tiny_eva02")


def _model_kwargs(kwargs: dict) -> dict:
    """timm.create_model's arguments minus the factory-only ones it passes to every entrypoint."""
    return {k: v for k, v in kwargs.items() if k not in {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}}


def clipimo_tiny_siglip_vit(pretrained: bool = False, **kwargs):
    """SigLIP's tower (no class token, attention-pool 'map' head) at width 64, depth 2, 32 px."""
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="map")
    return VisionTransformer(**{**args, **_model_kwargs(kwargs)})


def clipimo_tiny_eva02(pretrained: bool = False, **kwargs):
    """EVA02-CLIP's tower (rotary embeddings, SwiGLU with inner norm, sub-LN attention) plus layer scale."""
    from timm.models.eva import Eva

    args = dict(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3, qkv_fused=False,
        swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
        init_values=0.5, global_pool="token",
    )
    return Eva(**{**args, **_model_kwargs(kwargs)})


def register() -> bool:
    """Make the tiny towers known to timm; False when timm is not installed."""
    try:
        from timm.models import is_model, register_model
    except ImportError:
        return False
    for fn in (clipimo_tiny_siglip_vit, clipimo_tiny_eva02):
        if not is_model(fn.__name__):
            register_model(fn)
    return True
