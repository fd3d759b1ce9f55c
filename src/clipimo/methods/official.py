"""The official per-dataset configurations of ProKeR, APE and Tip-Adapter-F (their released RN50
configs), looked up by the task's dataset name, and the options that
choose them.

Only the released benchmarks have official values; any other task (a custom folder, or a features
file whose metadata names no dataset) is refused with its name rather than given a guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ClipimoError
from .common import MethodOptions

CONFIGS = ("default", "official")
_IMAGENET = ("imagenet", "imagenetv2", "imagenetsketch", "imageneta", "imagenetr")
# clipimo's dataset names (lower-case alphanumerics) -> the official configs' file names.
_OFFICIAL_NAMES = {
    "caltech101": "caltech101", "describabletextures": "dtd", "dtd": "dtd", "eurosat": "eurosat",
    "fgvcaircraft": "fgvc", "fgvc": "fgvc", "food101": "food101", "oxfordflowers": "oxford_flowers",
    "oxfordpets": "oxford_pets", "stanfordcars": "stanford_cars", "sun397": "sun397", "ucf101": "ucf101",
    **dict.fromkeys(_IMAGENET, "imagenet"),  # the shift sets use ImageNet's values
}


@dataclass(frozen=True)
class ApeConfig:
    """APE's channel count (for D = 1024; scaled to the feature width), criterion weights (w0, w1)
    and search scales/steps (beta, alpha, gamma)."""

    feat_num_1024: int
    weights: tuple[float, float]
    scale: tuple[float, float, float]
    step: tuple[int, int, int]


@dataclass(frozen=True)
class TipfConfig:
    """Tip-F's training-time alpha0 and epochs (beta0 = 1 and lr 1e-3 everywhere)."""

    init_alpha: float
    epochs: int


_STEP = (200, 20, 20)
APE_DEFAULT = ApeConfig(700, (0.5, 0.5), (7.0, 7.0, 1.0), _STEP)
APE_OFFICIAL = {
    "caltech101": ApeConfig(800, (0.5, 0.5), (7.0, 7.0, 1.0), _STEP),
    "dtd": ApeConfig(400, (0.5, 0.5), (7.0, 7.0, 1.0), _STEP),
    "eurosat": ApeConfig(700, (0.9, 0.1), (30.0, 5.0, 1.5), _STEP),
    "fgvc": ApeConfig(800, (0.1, 0.9), (20.0, 10.0, 1.0), _STEP),
    "food101": ApeConfig(700, (0.3, 0.7), (7.0, 7.0, 1.0), _STEP),
    "imagenet": ApeConfig(500, (0.7, 0.3), (7.0, 7.0, 0.5), (200, 20, 5)),
    "oxford_flowers": ApeConfig(700, (0.4, 0.6), (7.0, 7.0, 1.0), _STEP),
    "oxford_pets": ApeConfig(800, (0.7, 0.3), (7.0, 7.0, 1.0), _STEP),
    "stanford_cars": ApeConfig(500, (0.6, 0.4), (10.0, 7.0, 1.0), _STEP),
    "sun397": ApeConfig(800, (0.7, 0.3), (10.0, 7.0, 1.0), _STEP),
    "ucf101": ApeConfig(700, (0.3, 0.7), (10.0, 7.0, 1.5), _STEP),
}
_CLASSIC_GRID = ((0.5, 3.0, 20), (0.001, 1.0, 10))
_TEXTURE_GRID = ((0.1, 10.0, 20), (0.001, 10.0, 100))
# The released RN50 configs (configs/RN50/configs_proker/*.yaml) by official dataset name
# (:func:`official_name`; ImageNet's shift sets use ImageNet's).
PROKER_OFFICIAL = {
    **dict.fromkeys(("caltech101", "fgvc", "food101", "ucf101"), _CLASSIC_GRID),
    "eurosat": ((0.5, 3.0, 20), (0.001, 1.0, 100)),
    **dict.fromkeys(("dtd", "oxford_flowers"), _TEXTURE_GRID),
    "sun397": ((0.1, 10.0, 20), (0.01, 10.0, 10)),
    "oxford_pets": ((0.01, 5.0, 40), (0.01, 0.3, 20)),
    "stanford_cars": ((0.1, 10.0, 5), (0.01, 1.0, 5)),
    "imagenet": ((1.5, 3.0, 10), (0.05, 0.25, 10)),
}
TIPF_DEFAULT = TipfConfig(1.17, 20)
TIPF_OFFICIAL = {
    "caltech101": TipfConfig(3.0, 20), "dtd": TipfConfig(2.0, 20), "eurosat": TipfConfig(2.0, 100),
    "fgvc": TipfConfig(5.0, 20), "food101": TipfConfig(1.17, 20), "imagenet": TipfConfig(1.17, 20),
    "oxford_flowers": TipfConfig(10.0, 20), "oxford_pets": TipfConfig(1.17, 20),
    "stanford_cars": TipfConfig(3.0, 20), "sun397": TipfConfig(1.17, 20), "ucf101": TipfConfig(3.0, 20),
}

T = TypeVar("T")


def official_name(dataset: str | None) -> str | None:
    """The official configs' name of a clipimo dataset name (any case and punctuation), or None."""
    return _OFFICIAL_NAMES.get(re.sub(r"[^a-z0-9]", "", (dataset or "").lower()))


def lookup(table: dict[str, T], dataset: str | None, flag: str) -> T:
    """``table``'s entry for ``dataset``; a task without official values is one clear error."""
    name = official_name(dataset)
    if name not in table:
        known = sorted({k for k, v in _OFFICIAL_NAMES.items() if v in table})
        raise ClipimoError(f"{flag} official: no official configuration for dataset {dataset!r} (the features "
                           f"metadata must name one of {', '.join(known)}); use {flag} default")
    return table[name]


def ape_config(options: MethodOptions) -> ApeConfig:
    if options.ape_config == "default":
        return APE_DEFAULT
    return lookup(APE_OFFICIAL, options.dataset, "--ape-config")


def tipf_config(options: MethodOptions) -> TipfConfig:
    if options.tipf_config == "default":
        return TIPF_DEFAULT
    return lookup(TIPF_OFFICIAL, options.dataset, "--tipf-config")


def check_configs(options: MethodOptions, methods: list[str]) -> None:
    """Fail before any work when an official configuration asked for does not exist for the task."""
    bases = {m.removesuffix("-imo") for m in methods}
    opts = options
    if "proker" in bases and opts.proker_grid == "official":
        lookup(PROKER_OFFICIAL, opts.dataset, "--proker-grid")
    if "ape" in bases:
        ape_config(opts)
    if "tip-f" in bases:
        tipf_config(opts)
