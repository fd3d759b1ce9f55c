"""Positional embeddings for inputs of another size than the ViT was built for (DINO's 96-px crops).

open_clip's ``VisionTransformer._embeds`` adds ``self.positional_embedding`` (class token + one
row per patch of the native grid) to the patch tokens, so any other input size fails there.
``enable_any_input_size(visual)`` gives one ViT instance an ``_embeds`` that, for a grid other than
the native one, swaps in a bicubically interpolated embedding (class token rows kept as they are)
for the duration of the call and then runs open_clip's own ``_embeds``. At the native grid it calls
open_clip's ``_embeds`` directly, so that forward is bitwise the usual one.
"""
from __future__ import annotations

import types
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ClipimoError


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def interpolate_pos_embed(
    pos_embed: torch.Tensor, old_grid: int | Sequence[int], new_grid: int | Sequence[int]
) -> torch.Tensor:
    """Resample a ViT positional embedding ``[prefix + gh*gw, width]`` to another patch grid.

    Prefix rows (the class token; any count) are kept unchanged; the patch rows are treated as a
    ``width``-channel image of the old grid and resized with bicubic interpolation
    (``align_corners=False``, no antialiasing), computed in float32. As in DINO and the paper's
    code, the resize is given as ``scale_factor = (new + 0.1) / old`` per axis, not as a target
    size: the output still has ``new`` rows per axis, but source positions are spaced by
    ``old / (new + 0.1)`` instead of ``old / new`` (2-10% apart at 14 -> 6). At the same grid the
    input tensor itself is returned.
    """
    old_grid, new_grid = _pair(old_grid), _pair(new_grid)
    if min(new_grid) < 1:
        raise ClipimoError(f"input too small for this ViT: patch grid {new_grid}")
    squeeze = pos_embed.dim() == 3
    pos = pos_embed[0] if squeeze else pos_embed
    n_patch = old_grid[0] * old_grid[1]
    n_prefix = pos.shape[0] - n_patch
    if n_prefix < 0:
        raise ClipimoError(f"positional embedding has {pos.shape[0]} rows, fewer than the {old_grid} grid needs")
    if new_grid == old_grid:
        return pos_embed
    prefix, grid = pos[:n_prefix], pos[n_prefix:]
    width = pos.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    scale = tuple((n + 0.1) / o for n, o in zip(new_grid, old_grid))
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width).to(pos.dtype)
    out = torch.cat([prefix, grid], dim=0)
    return out.unsqueeze(0) if squeeze else out


def input_grid(visual: nn.Module, height: int, width: int) -> tuple[int, int]:
    ph, pw = _pair(visual.patch_size)
    return height // ph, width // pw


def _embeds_any_size(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    native = tuple(self.grid_size)
    grid = input_grid(self, x.shape[-2], x.shape[-1])
    embeds = type(self)._embeds
    if grid == native:
        return embeds(self, x)
    original = self._parameters["positional_embedding"]
    self._parameters["positional_embedding"] = interpolate_pos_embed(original, native, grid)
    try:
        return embeds(self, x)
    finally:
        self._parameters["positional_embedding"] = original


def _visual(model: nn.Module) -> nn.Module:
    visual = getattr(model, "visual", model)
    needed = ("positional_embedding", "grid_size", "patch_size", "_embeds")
    if not all(hasattr(visual, a) for a in needed) or not isinstance(
        visual._parameters.get("positional_embedding"), torch.Tensor
    ):
        raise ClipimoError(
            f"positional-embedding interpolation needs an open_clip VisionTransformer image tower, "
            f"got {type(visual).__name__}"
        )
    return visual


def enable_any_input_size(model: nn.Module) -> nn.Module:
    """Let the ViT image tower of ``model`` (a CLIP model or its ``.visual``) take any input size.

    Idempotent; survives ``copy.deepcopy`` (the bound method is rebound to the copy). Returns the
    image tower.
    """
    visual = _visual(model)
    if not getattr(visual, "_clipimo_any_size", False):
        visual._embeds = types.MethodType(_embeds_any_size, visual)
        visual._clipimo_any_size = True
    return visual


def disable_any_input_size(model: nn.Module) -> nn.Module:
    visual = _visual(model)
    if getattr(visual, "_clipimo_any_size", False):
        del visual.__dict__["_embeds"]
        visual._clipimo_any_size = False
    return visual


def crop_sizes(image_size: int, patch_size: int | Sequence[int], local_size: int | None = None,
               global_size: int | None = None) -> tuple[int, int]:
    """Default (global, local) DINO crop sizes for a backbone.

    Global: the backbone's image size. Local: DINO's 96/224 = 3/7 of it: exactly 96 for 224 px
    backbones (whatever the patch size) and 144 for 336 px; when 3/7 of the size is not a whole
    number, the nearest multiple of the patch size (at least one patch), e.g. 16 for 32 px / patch 8.
    """
    g = int(global_size or image_size)
    if local_size:
        return g, int(local_size)
    patch = max(_pair(patch_size))
    if (3 * g) % 7 == 0:
        return g, 3 * g // 7
    return g, max(patch, int(round(3 * g / 7 / patch)) * patch)


__all__ = ["interpolate_pos_embed", "enable_any_input_size", "disable_any_input_size", "crop_sizes", "input_grid"]
