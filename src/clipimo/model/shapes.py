"""What a weights file says about itself before it is loaded: the open_clip architectures its tensor
shapes fit, and whether it is known to be OpenAI's (whose CLIP models use QuickGELU)."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import open_clip
import torch

_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")
_TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "layers": 12}


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors, state-dict or TorchScript file (open_clip's
    nesting under ``state_dict`` and DDP's ``module.`` prefix removed)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    else:
        if zipfile.is_zipfile(path) and any("/code/" in n for n in zipfile.ZipFile(path).namelist()):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {k.removeprefix("module."): v for k, v in shapes.items()}


def _signature(shapes: dict[str, tuple[int, ...]]) -> dict[str, object] | None:
    """The architecture numbers of an open_clip ViT checkpoint, or None for another kind of file."""
    needed = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
              "positional_embedding")
    if not all(k in shapes for k in needed):
        return None
    blocks: dict[bool, set[int]] = {True: set(), False: set()}
    for key in shapes:
        match = _BLOCK.match(key)
        if match:
            blocks[bool(match.group(1))].add(int(match.group(2)))
    width, _, patch, _ = shapes["visual.conv1.weight"]
    grid = round((shapes["visual.positional_embedding"][0] - 1) ** 0.5)
    mlp = shapes.get("visual.transformer.resblocks.0.mlp.c_fc.weight", (4 * width,))[0]
    return {"embed_dim": shapes["visual.proj"][1], "width": width, "patch_size": patch, "image_size": grid * patch,
            "layers": len(blocks[True]), "mlp_ratio": mlp / width, "text_width": shapes["token_embedding.weight"][1],
            "vocab_size": shapes["token_embedding.weight"][0], "context_length": shapes["positional_embedding"][0],
            "text_layers": len(blocks[False])}


def _config_signature(cfg: dict) -> dict[str, object] | None:
    vision, text = cfg.get("vision_cfg", {}), {**_TEXT_DEFAULTS, **cfg.get("text_cfg", {})}
    if vision.get("timm_model_name") or not isinstance(vision.get("layers"), int) or text.get("hf_model_name"):
        return None
    size = vision.get("image_size", 224)
    return {"embed_dim": cfg.get("embed_dim"), "width": vision.get("width", 768),
            "patch_size": vision.get("patch_size", 16), "image_size": size if isinstance(size, int) else size[0],
            "layers": vision["layers"], "mlp_ratio": float(vision.get("mlp_ratio", 4.0)),
            "text_width": text["width"], "vocab_size": text["vocab_size"],
            "context_length": text["context_length"], "text_layers": text["layers"]}


def implied_architectures(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The open_clip model names (native ViT towers) whose tensors have these shapes; plain-GELU
    names before their ``-quickgelu`` twins."""
    wanted = _signature(shapes)
    if wanted is None:
        return []
    names = [n for n in open_clip.list_models() if _config_signature(open_clip.get_model_config(n) or {}) == wanted]
    return sorted(names, key=lambda n: (n.endswith("-quickgelu"), len(n), n))


def is_openai_file(path: str | Path) -> bool:
    """True when the file names itself OpenAI's: its file name, or the Hugging Face cache folder of the
    repo it came from (``models--timm--vit_base_patch16_clip_224.openai``). Nothing else about a
    state-dict tells OpenAI's weights from others."""
    path = Path(path)
    names = [path.name] + [p for p in path.parts if p.startswith("models--")]
    return any("openai" in n.lower() for n in names)
