"""Load an open_clip model with its eval transform and tokenizer, from a tag, a local file or random init.

Weight resolution is kept apart from architecture: ``resolve_weights`` turns the user's
``pretrained`` argument into a local file (or nothing, for random init) and an identity record;
``load_clip`` then builds the model through open_clip's factory. No machine of this project can
download weights, so an unreachable tag fails within seconds and says how to pass a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import open_clip
import torch
from torch import nn

from ..errors import ClipimoError
from ..utils import fileio
from ..utils.device import resolve_device
from ..utils.log import logger
from . import hub, shapes, tiny_timm

RANDOM_INIT_SEED = 0
_NONE_VALUES = {None, "", "none", "None", "random"}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_BUNDLED_CONFIGS = "configs"
_TORCHSCRIPT_EXTRAS = {"input_resolution", "context_length", "vocab_size", "attn_mask"}
CLIP_LOGIT_SCALE = 100.0


@dataclass
class Backbone:
    """A CLIP model plus everything needed to feed it and to name it in caches and reports."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    identity: dict[str, Any]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # How to load it again: the model and pretrained values as given (a weights file as its absolute
    # path). Not part of ``identity``: moving a file does not change the features.
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return bool(self.identity.get("random_init"))

    @property
    def embed_dim(self) -> int:
        """Width of the image (and text) embedding; timm towers have no ``visual.output_dim``."""
        return int(open_clip.get_model_config(self.name)["embed_dim"])

    @property
    def logit_scale_bias(self) -> tuple[float, float]:
        """The zero-shot logit ``s f W + b`` of this model: SigLIP-style models (those with a learned
        ``logit_bias``) use their own ``exp(logit_scale)`` and bias; CLIP uses 100 and 0."""
        bias = getattr(self.model, "logit_bias", None)
        if bias is None:
            return CLIP_LOGIT_SCALE, 0.0
        return float(self.model.logit_scale.detach().float().exp()), float(bias.detach())



def _register_bundled_configs() -> None:
    """Make the tiny test/demo architectures shipped with clipimo known to open_clip by name."""
    tiny_timm.register()
    folder = resources.files("clipimo.model").joinpath(_BUNDLED_CONFIGS)
    known = set(open_clip.list_models())
    for entry in folder.iterdir():
        if entry.name.endswith(".json") and entry.name[:-5] not in known:
            open_clip.add_model_config(str(entry))


def resolve_model_name(name: str) -> str:
    """Accept an open_clip model name, a bundled clipimo config name, or a path to a config JSON."""
    _register_bundled_configs()
    if name.endswith(".json"):
        path = Path(name)
        cfg = fileio.read_json(path, "model config")
        if "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise ClipimoError(f"model config file {path} lacks 'vision_cfg'/'text_cfg' (open_clip format)")
        open_clip.add_model_config(str(path))
        return path.stem
    if hub.is_hub_ref(name):
        raise ClipimoError(f"--model takes an architecture name; for Hub weights pass e.g. --model ViT-B-16-SigLIP "
                           f"--pretrained {name}")
    if open_clip.get_model_config(name) is None:
        raise ClipimoError(
            f"unknown model '{name}': expected an open_clip model name (e.g. ViT-B-16; see "
            "open_clip.list_models()) or a path to an open_clip model config .json"
        )
    return name


def require_packages(name: str) -> None:
    """A model whose towers need timm or transformers gets a one-line install hint when they are missing."""
    cfg = open_clip.get_model_config(name) or {}
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    needs = []
    if vision.get("timm_model_name"):
        needs.append(("timm", "timm"))
    if text.get("hf_model_name") or text.get("hf_tokenizer_name") or "siglip" in name.lower():
        needs.append(("transformers", "siglip"))
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            raise ClipimoError(f"model {name} needs the '{module}' package: pip install 'clipimo[{extra}]'")


def _tokenizer(name: str) -> Callable:
    try:
        return open_clip.get_tokenizer(name)
    except (ImportError, OSError, ValueError) as err:  # a Hugging Face tokenizer neither cached nor reachable
        raise ClipimoError(f"could not load the tokenizer of {name}: {err}") from err


def _is_torchscript(path: Path) -> bool:
    """OpenAI's released .pt files are TorchScript archives (and imply QuickGELU)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())


def _torchscript_state_dict(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of an OpenAI-style TorchScript archive, minus its non-weight entries."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    persistent = model.state_dict().keys()
    return {k: v for k, v in state.items() if k in persistent or k not in _TORCHSCRIPT_EXTRAS}


def _openai_needs_quick_gelu(name: str) -> bool:
    """True when ``name`` has OpenAI weights trained with QuickGELU but itself uses plain GELU."""
    cfg = open_clip.get_model_config(name) or {}
    return bool(open_clip.get_pretrained_cfg(name, "openai").get("quick_gelu")) and not cfg.get("quick_gelu")


def _architecture_hint(checkpoint: str, name: str) -> str:
    """"its tensor shapes are those of X; pass --model X" for a file that fits another architecture
    (the usual cause: --model left at its default); "" when the shapes name none."""
    try:
        fits = [n for n in shapes.implied_architectures(shapes.tensor_shapes(checkpoint)) if n != name]
    except Exception:  # an unreadable file: the load error itself says why
        return ""
    if not fits:
        return ""
    quick = [n for n in fits if n.endswith("-quickgelu")]
    best = quick[0] if quick and shapes.is_openai_file(checkpoint) else fits[0]
    others = [n for n in fits if n != best][:3]
    return (f"its tensor shapes are those of {best}" + (f" (or {', '.join(others)})" if others else "")
            + f"; pass --model {best}")


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> str | None:
    """The already-downloaded weights file for a pretrained tag, without touching the network."""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or open_clip.constants.HF_WEIGHTS_NAME
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            safe = open_clip.constants.HF_SAFE_WEIGHTS_NAME
            candidates.insert(0, safe if filename == open_clip.constants.HF_WEIGHTS_NAME else filename[:-4] + ".safetensors")
        for fname in candidates:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir or hub.hub_cache_dir())
            if isinstance(hit, str):
                return hit
    if cfg.get("url"):
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
    return None


def _download_tag(name: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    cached = _cached_tag_file(cfg, cache_dir)
    if cached:
        return cached
    why = hub.unreachable_reason(hub.hub_host() if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname)
    if why:
        raise ClipimoError(
            f"pretrained weights '{tag}' for {name} are not in the local cache and {why}. "
            f"Download them on a machine with network access (open_clip.create_model('{name}', "
            f"pretrained='{tag}') fills the Hugging Face cache), then either copy the cache (HF_HOME) "
            f"or pass the weights file directly: --pretrained /path/to/weights.{{safetensors,bin,pt}}"
            + (f" with --model {name}-quickgelu (OpenAI weights use QuickGELU; their TorchScript .pt files "
               "set it by themselves)" if cfg.get("quick_gelu") and not name.endswith("-quickgelu") else "")
        )
    try:
        return open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # network errors come in many types; name the tag and the fix
        raise ClipimoError(f"downloading pretrained '{tag}' for {name} failed: {err}") from err


def resolve_weights(name: str, pretrained: str | os.PathLike | None, cache_dir: str | None = None) -> tuple[str | None, dict, dict]:
    """Return (local checkpoint path or None, tag config or {}, identity record)."""
    if pretrained in _NONE_VALUES:
        return None, {}, {"model": name, "weights": f"random-init(seed={RANDOM_INIT_SEED})", "random_init": True}
    text = str(pretrained)
    if hub.is_hub_ref(text):
        defaults = [open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
        file = hub.hub_file(text, defaults, "pretrained weights")
        repo, _ = hub.parse_hub_ref(text)
        weights = f"hf-hub:{repo}/{file.name}@{hub.hub_revision(file) or 'sha256:' + fileio.sha256_file(file)}"
        return str(file), {}, {"model": name, "weights": weights, "random_init": False}
    path = Path(text).expanduser()
    tag_cfg = open_clip.get_pretrained_cfg(name, text)
    if tag_cfg and not path.exists():
        file = _download_tag(name, text, tag_cfg, cache_dir)
        return file, tag_cfg, {"model": name, "weights": f"tag:{text}", "random_init": False}
    if path.is_file():
        return str(path), {}, {"model": name, "weights": f"sha256:{fileio.sha256_file(path)}", "random_init": False}
    if text.endswith(_WEIGHT_SUFFIXES) or os.sep in text:
        raise ClipimoError(f"pretrained weights file {path} does not exist")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise ClipimoError(
        f"'{text}' is neither a pretrained tag of {name} (known tags: {', '.join(tags) or 'none'}) "
        "nor an existing weights file; use 'none' for random init"
    )


def weights_source(pretrained: str | os.PathLike | None, identity: dict[str, Any]) -> str | None:
    """The ``pretrained`` value that loads these weights again: a tag or Hub reference as given, a
    file as its absolute path, None for random init."""
    if identity.get("random_init"):
        return None
    text = str(pretrained)
    return str(Path(text).expanduser().resolve()) if str(identity.get("weights", "")).startswith("sha256:") else text


class _OpenClipRandomInitFilter(logging.Filter):
    """open_clip says "No pretrained weights loaded" on the root logger, outside -q; clipimo's own
    RANDOM-INIT banner already says it once per command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_open_clip_random_init_warning() -> Iterator[None]:
    root, drop = logging.getLogger(), _OpenClipRandomInitFilter()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def load_clip(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> Backbone:
    """Build an open_clip model with weights from a tag, a local file, or random init (``None``/"none").

    Random init is seeded, so its features are reproducible; ``Backbone.random_init`` flags it and
    every report built on it must say so.
    """
    device = resolve_device(device)  # a clear error for --device cuda without CUDA
    given = str(name)
    name = resolve_model_name(name)
    require_packages(name)
    local = pretrained not in _NONE_VALUES and Path(str(pretrained)).is_file()
    stamp = fileio.file_stamp(pretrained) if local else None  # checked after the load (docs/files.md, "Feature cache")
    checkpoint, tag_cfg, identity = resolve_weights(name, pretrained, cache_dir)
    kwargs: dict[str, Any] = {}
    if tag_cfg:
        kwargs.update(
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            image_mean=tag_cfg.get("mean"),
            image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"),
            image_resize_mode=tag_cfg.get("resize_mode"),
        )
    torchscript = bool(checkpoint) and _is_torchscript(Path(checkpoint))
    if torchscript:
        kwargs["force_quick_gelu"] = True
    elif checkpoint and not tag_cfg and _openai_needs_quick_gelu(name) and shapes.is_openai_file(checkpoint):
        logger.warning(
            "%s: OpenAI CLIP weights (by their name) were trained with QuickGELU, but %s uses plain GELU: "
            "use --model %s-quickgelu, or the features are wrong", Path(checkpoint).name, name, name,
        )
    identity["config_sha256"] = hashlib.sha256(
        json.dumps(open_clip.get_model_config(name), sort_keys=True).encode()
    ).hexdigest()[:16]
    identity["quick_gelu"] = bool(kwargs.get("force_quick_gelu", open_clip.get_model_config(name).get("quick_gelu", False)))
    with torch.random.fork_rng(devices=[]), _without_open_clip_random_init_warning():
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None if torchscript else checkpoint, device=device, **kwargs
            )
            if torchscript:
                model.load_state_dict(_torchscript_state_dict(Path(checkpoint), model), strict=True)
        except Exception as err:
            if checkpoint is None:
                raise
            fits = _architecture_hint(checkpoint, name)
            if fits:
                raise ClipimoError(f"weights file {checkpoint} does not fit {name}: {fits}") from err
            raise ClipimoError(
                f"could not load weights file {checkpoint} into {name}: {err}. Expected an open_clip or "
                "OpenAI CLIP checkpoint (TorchScript .pt, state-dict .pt/.pth/.bin, or .safetensors) "
                "matching this architecture"
            ) from err
    if stamp is not None and fileio.file_stamp(pretrained) != stamp:  # hashed one file, loaded another
        raise ClipimoError(f"weights file {pretrained} changed while it was being hashed and loaded; run again "
                           "once it no longer changes")
    model.eval()
    model.clipimo_identity = identity
    pp = model.visual.preprocess_cfg
    size = pp["size"]
    return Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=_tokenizer(name),
        name=name,
        identity=identity,
        image_size=int(size if isinstance(size, int) else size[0]),
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
        device=torch.device(device),
        source={"model": str(Path(given).resolve()) if given.endswith(".json") else given,
                "pretrained": weights_source(pretrained, identity)},
    )
