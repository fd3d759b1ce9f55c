"""The official per-dataset configurations of ProKeR, APE, Tip-Adapter-F (their released RN50
configs) and TDA (its released configs), looked up by the task's dataset name, and the options
that choose them.

Only the released benchmarks have official values; any other task (a custom folder, or a features
file whose metadata names no dataset) is refused with its name rather than given a guess.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

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



@dataclass(frozen=True)
class TdaConfig:
    """TDA's two caches: capacity per class, vote weight alpha and sharpness beta each; the
    negative cache's normalised-entropy band for admission and probability band for its mask."""

    name: str = "default"
    pos_enabled: bool = True
    pos_capacity: int = 3
    pos_alpha: float = 2.0
    pos_beta: float = 5.0
    neg_enabled: bool = True
    neg_capacity: int = 2
    neg_alpha: float = 0.117
    neg_beta: float = 1.0
    entropy_band: tuple[float, float] = (0.2, 0.5)
    mask_band: tuple[float, float] = (0.03, 1.0)

    def settings(self) -> dict[str, Any]:
        """Everything but the name, JSON-ready (bands as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "name"}


# The released per-dataset positive caches (alpha, beta); the shift sets have rows of their own.
TDA_OFFICIAL = {
    "caltech101": (5.0, 5.0), "dtd": (2.0, 3.0), "eurosat": (4.0, 8.0), "fgvc": (2.0, 2.0), "food101": (1.0, 1.0),
    "oxford_flowers": (1.0, 5.0), "oxford_pets": (2.0, 7.0), "stanford_cars": (1.0, 7.0), "sun397": (2.0, 3.0),
    "ucf101": (3.0, 8.0), "imagenet": (2.0, 5.0), "imagenet_a": (2.0, 5.0), "imagenet_v": (1.0, 8.0),
    "imagenet_r": (1.0, 8.0), "imagenet_s": (2.363, 7.45),
}
_TDA_SHIFT_NAMES = {"imageneta": "imagenet_a", "imagenetv2": "imagenet_v", "imagenetr": "imagenet_r",
                    "imagenetsketch": "imagenet_s"}

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


def tda_config(options: MethodOptions) -> TdaConfig:
    """``default``, the official row of the task's dataset, or a YAML file in the released schema."""
    choice = options.tda_config
    if choice == "default":
        return TdaConfig()
    if choice == "official":
        key = re.sub(r"[^a-z0-9]", "", (options.dataset or "").lower())
        name = _TDA_SHIFT_NAMES.get(key) or official_name(options.dataset)
        if name not in TDA_OFFICIAL:
            known = sorted({k for k, v in {**_OFFICIAL_NAMES, **_TDA_SHIFT_NAMES}.items() if v in TDA_OFFICIAL})
            raise ClipimoError(f"--tda-config official: no official configuration for dataset {options.dataset!r} "
                               f"(the features metadata must name one of {', '.join(known)}); use --tda-config "
                               "default or a YAML file")
        alpha, beta = TDA_OFFICIAL[name]
        return TdaConfig(name=f"official:{name}", pos_alpha=alpha, pos_beta=beta)
    return _tda_file(Path(choice))


def _tda_file(path: Path) -> TdaConfig:
    import yaml

    if not path.is_file():
        raise ClipimoError(f"--tda-config {path}: not default, official or an existing YAML file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        pos, neg = doc["positive"], doc["negative"]
        band = [(float(neg[k]["lower"]), float(neg[k]["upper"])) for k in ("entropy_threshold", "mask_threshold")]
        return TdaConfig(
            name=f"file:{path}", pos_enabled=bool(pos["enabled"]), pos_capacity=int(pos["shot_capacity"]),
            pos_alpha=float(pos["alpha"]), pos_beta=float(pos["beta"]), neg_enabled=bool(neg["enabled"]),
            neg_capacity=int(neg["shot_capacity"]), neg_alpha=float(neg["alpha"]), neg_beta=float(neg["beta"]),
            entropy_band=band[0], mask_band=band[1])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ClipimoError(f"--tda-config {path}: expected YAML with positive: {{enabled, shot_capacity, alpha, beta}} "
                           "and negative: {enabled, shot_capacity, alpha, beta, entropy_threshold: {lower, upper}, "
                           f"mask_threshold: {{lower, upper}}}}, every key given ({type(exc).__name__}: {exc})") from None


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
    if "tda" in bases:
        tda_config(opts)
