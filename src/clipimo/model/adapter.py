"""The IMO adapter: a bottleneck MLP added to every residual block of a CLIP ViT image tower.

In block i, with ``h = x + Attn(LN1(x))`` (attention branch including the block's own layer scale
and drop-path)::

    out = h + MLP(LN2(h)) + s * Up(Dropout(ReLU(Down(h))))

Two tower kinds are supported: open_clip's native ViT (``visual.transformer.resblocks``, LN2 is
``ln_2``) and the pre-norm timm towers open_clip wraps for SigLIP/SigLIP2, EVA02 and ViT-SO400M
(``visual.trunk.blocks``: timm ``Block`` and ``EvaBlock``, LN2 is ``norm2``). In both, LN2 is
called exactly once, on ``h``. The adapter is attached with two hooks instead of a rewritten block
forward, so the block code stays the library's own: a pre-hook on LN2 records ``h`` and a forward
hook on the block adds the adapter branch to the block output. With the adapters switched off the
hooks do nothing, so the "original" stream runs exactly the untouched open_clip computation.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ClipimoError
from ..utils import fileio
from ..version import __version__
from .hub import resolve_adapter

ADAPTER_FORMAT = "clipimo-imo-adapter"
ADAPTER_FORMAT_VERSION = 1
INITS = ("lora", "zero")
_CONFIG_TYPES = {"width": int, "layers": int, "bottleneck": int, "scale": (int, float), "dropout": (int, float),
                 "init": str}


class IMOAdapter(nn.Module):
    """``s * Up(Dropout(ReLU(Down(h))))``; ``enabled`` selects the corrected (True) or original stream."""

    def __init__(self, width: int, bottleneck: int = 64, scale: float = 0.03, dropout: float = 0.1, init: str = "lora"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"adapter init must be one of {INITS}, got {init!r}")
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        self.scale = float(scale)
        self.init = init
        self.enabled = True
        self._h: torch.Tensor | None = None
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "lora") -> None:
        """'lora': Down kaiming-uniform(a=sqrt 5), the rest zero, so the adapted model starts equal to CLIP."""
        if init == "lora":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        else:
            nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(F.relu(self.down(h))))

    @property
    def config(self) -> dict[str, Any]:
        return {"bottleneck": self.down.out_features, "scale": self.scale, "dropout": self.dropout.p, "init": self.init}

    def extra_repr(self) -> str:
        return f"scale={self.scale}, enabled={self.enabled}"


def _record_h(adapter: IMOAdapter, ln_2: nn.Module, args: tuple) -> None:
    adapter._h = args[0] if adapter.enabled else None


def _add_branch(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    adapter: IMOAdapter = block.adapter
    h, adapter._h = adapter._h, None
    if h is None:
        return None
    return output + adapter(h.to(adapter.down.weight.dtype)).to(output.dtype)


@dataclass(frozen=True)
class Tower:
    """The adaptable blocks of an image tower: ``kind`` ("open_clip-vit" or "timm"), the blocks, the
    name of each block's LN2 (whose input is ``h``) and the key prefix of their adapter tensors."""

    kind: str
    blocks: nn.ModuleList
    ln2: str
    prefix: str

    def width(self) -> int:
        return int(getattr(self.blocks[0], self.ln2).normalized_shape[0])


def _timm_pre_norm_blocks() -> tuple[type, ...]:
    """timm block classes computing ``h = x + attn branch; out = h + mlp branch(norm2(h))``; post-norm
    variants (ResPostBlock, EvaBlockPostNorm) apply norm2 to the MLP output and are not among them."""
    from timm.models.eva import EvaBlock
    from timm.models.vision_transformer import Block

    return Block, EvaBlock


def image_tower(model: nn.Module) -> Tower:
    """Locate the blocks to adapt; any other tower (ResNet, post-norm or unknown timm blocks) is refused."""
    visual = getattr(model, "visual", model)
    native = getattr(getattr(visual, "transformer", None), "resblocks", None)
    trunk = getattr(getattr(visual, "trunk", None), "blocks", None)
    if native is not None:
        tower = Tower("open_clip-vit", native, "ln_2", "resblocks")
    elif isinstance(trunk, nn.Sequential | nn.ModuleList) and len(trunk):
        tower = Tower("timm", trunk, "norm2", "blocks")
        supported = _timm_pre_norm_blocks()
        for i, block in enumerate(trunk):
            if type(block) not in supported:
                raise ClipimoError(
                    f"timm image block {i} is a {type(block).__name__}; IMO adapters support the pre-norm "
                    f"timm blocks {', '.join(c.__name__ for c in supported)} (SigLIP, SigLIP2, EVA02, ViT-SO400M)"
                )
    else:
        raise ClipimoError(
            f"IMO adapters need a ViT image tower (visual.transformer.resblocks or a timm trunk with "
            f"visual.trunk.blocks); this model's image tower is {type(visual).__name__}, which is not "
            "supported (ResNet towers are not)"
        )
    for i, block in enumerate(tower.blocks):
        if not isinstance(getattr(block, tower.ln2, None), nn.Module):
            raise ClipimoError(f"image block {i} ({type(block).__name__}) has no {tower.ln2}: not a supported ViT block")
    return tower


def has_adapters(model: nn.Module) -> bool:
    try:
        blocks = image_tower(model).blocks
    except ClipimoError:
        return False
    return all(isinstance(getattr(b, "adapter", None), IMOAdapter) for b in blocks)


def iter_adapters(model: nn.Module) -> Iterator[IMOAdapter]:
    for block in image_tower(model).blocks:
        adapter = getattr(block, "adapter", None)
        if not isinstance(adapter, IMOAdapter):
            raise ClipimoError("model has no IMO adapters; call add_adapters(model) or load_adapters(model, path)")
        yield adapter


def add_adapters(
    model: nn.Module, bottleneck: int = 64, scale: float = 0.03, dropout: float = 0.1, init: str = "lora"
) -> nn.Module:
    """Add an IMO adapter to every image-tower block and freeze everything but the adapters.

    Returns the model (modified in place). The adapters start enabled; see ``adapters_enabled``.
    """
    tower = image_tower(model)
    if has_adapters(model):
        raise ClipimoError("model already has IMO adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    ref = next(model.parameters())
    for block in tower.blocks:
        adapter = IMOAdapter(tower.width(), bottleneck, scale, dropout, init).to(device=ref.device)
        adapter.train(block.training)
        block.adapter = adapter
        getattr(block, tower.ln2).register_forward_pre_hook(functools.partial(_record_h, adapter))
        block.register_forward_hook(_add_branch)
    return model


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for adapter in iter_adapters(model) for p in adapter.parameters()]


@contextlib.contextmanager
def adapters_enabled(model: nn.Module, on: bool) -> Iterator[nn.Module]:
    """Select the stream inside the block: ``on=False`` is plain CLIP ("original"), ``True`` "corrected"."""
    adapters = list(iter_adapters(model))
    before = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = bool(on)
    try:
        yield model
    finally:
        for a, state in zip(adapters, before):
            a.enabled = state


def adapter_config(model: nn.Module) -> dict[str, Any]:
    tower = image_tower(model)
    first = next(iter_adapters(model))
    return {**first.config, "width": tower.width(), "layers": len(tower.blocks), "tower": tower.kind}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, keyed ``{resblocks|blocks}.{i}.{down|up}.{weight|bias}`` (native | timm tower)."""
    prefix = image_tower(model).prefix
    return {
        f"{prefix}.{i}.{name}": t.detach().to("cpu").contiguous()
        for i, adapter in enumerate(iter_adapters(model))
        for name, t in adapter.state_dict().items()
    }


def save_adapters(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write the adapter tensors, their config and the backbone identity to a safetensors file."""
    meta = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_FORMAT_VERSION,
        "config": adapter_config(model),
        "backbone": getattr(model, "clipimo_identity", None),
        "clipimo_version": __version__,
        **(extra or {}),
    }
    fileio.write_safetensors(path, adapter_state(model), "clipimo", meta)


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file read once: its tensors, metadata, and the SHA-256 of the very bytes they came
    from (hashing the file again could hash a file replaced in between)."""

    path: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """An adapter file (local or ``hf-hub:ORG/REPO[/FILE]``) read once, with clear errors for anything
    that is not one."""
    file = fileio.require_file(resolve_adapter(path), "adapter file")
    data = file.read_bytes()
    tensors, meta = _checked(*fileio.parse_safetensors(data, file, "clipimo", "adapter file"), file)
    return AdapterFile(str(file), tensors, meta, data)


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of an adapter file (see :func:`read_adapter`)."""
    adapter = read_adapter(path)
    return adapter.tensors, adapter.meta


def _checked(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
             path: os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of an adapter file, refused unless they are a usable adapter."""
    if meta.get("format") != ADAPTER_FORMAT or meta.get("version") != ADAPTER_FORMAT_VERSION:
        raise ClipimoError(
            f"{path}: unsupported adapter format {meta.get('format')!r} v{meta.get('version')}, "
            f"expected {ADAPTER_FORMAT!r} v{ADAPTER_FORMAT_VERSION}"
        )
    cfg = meta.get("config")
    wrong = [k for k, kind in _CONFIG_TYPES.items() if not isinstance(cfg, dict) or not isinstance(cfg.get(k), kind)]
    if wrong:
        raise ClipimoError(f"adapter file {path}: malformed metadata: 'config' needs {', '.join(_CONFIG_TYPES)} "
                           f"(bad or missing: {', '.join(wrong)}), got {cfg!r}")
    bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise ClipimoError(f"adapter file {path}: tensor(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold "
                           "NaN or infinite values; the adapter is unusable (training diverged?)")
    return tensors, meta


def load_adapters(model: nn.Module, path: str | os.PathLike, strict_backbone: bool = True) -> dict[str, Any]:
    """Load an adapter file into ``model``, adding adapters first if it has none; returns the metadata.

    A file made for another width or depth is refused; one made for another backbone identity
    (different model name or weights) is refused unless ``strict_backbone=False``.
    """
    return apply_adapter(model, read_adapter(path), strict_backbone)


def apply_adapter(model: nn.Module, adapter: AdapterFile, strict_backbone: bool = True) -> dict[str, Any]:
    """:func:`load_adapters` of a file already read."""
    tensors, meta, path = adapter.tensors, adapter.meta, adapter.path
    cfg = meta["config"]
    tower = image_tower(model)
    width, layers = tower.width(), len(tower.blocks)
    kind = cfg.get("tower", "open_clip-vit")  # files written before timm towers were supported
    if (cfg["width"], cfg["layers"], kind) != (width, layers, tower.kind):
        raise ClipimoError(
            f"adapter file {path} was made for a {kind} image tower of width {cfg['width']} with "
            f"{cfg['layers']} blocks, but this model has width {width} with {layers} blocks in a {tower.kind} tower"
        )
    ours, theirs = getattr(model, "clipimo_identity", None), meta.get("backbone")
    if strict_backbone and ours and theirs:
        keys = ("model", "weights")
        if any(ours.get(k) != theirs.get(k) for k in keys):
            raise ClipimoError(
                f"adapter file {path} was trained on {theirs.get('model')} ({theirs.get('weights')}), "
                f"not on this backbone {ours.get('model')} ({ours.get('weights')}); "
                "pass strict_backbone=False (--allow-backbone-mismatch) to use it anyway"
            )
    if not has_adapters(model):
        add_adapters(model, cfg["bottleneck"], cfg["scale"], cfg["dropout"], cfg["init"])
    for i, adapter in enumerate(iter_adapters(model)):
        prefix = f"{tower.prefix}.{i}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            adapter.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ClipimoError(f"adapter file {path}: block {i} tensors do not fit: {err}") from err
        adapter.scale = float(cfg["scale"])
        adapter.dropout.p = float(cfg["dropout"])
    return meta
