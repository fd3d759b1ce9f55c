"""Prompt templates of the few-shot protocol (docs/methods.md, "Benchmarks and the few-shot protocol"),
kept verbatim so results compare."""
from __future__ import annotations

from typing import Sequence

from ..errors import ClipimoError

# The 7-template ensemble used for ImageNet and its distribution-shift variants.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# Every other benchmark uses a single template.
SINGLE_TEMPLATES: dict[str, str] = {
    "Caltech101": "a photo of a {}.",
    "SUN397": "a photo of a {}.",
    "StanfordCars": "a photo of a {}.",
    "StanfordDogs": "a photo of a {}.",
    "PlantDoc": "a photo of a {}.",
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
    "CUB": "a photo of a {}, a type of bird.",
}

# Templates for user datasets (ImageFolder / CSV) unless the caller supplies its own.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def fill_template(template: str, name: str) -> str:
    """``template`` with ``name`` in place of its one ``{}``. Prompts are data, not format strings:
    every other brace (``{x}``, ``{{``, ``}``) stays literal text, and a class name is never read as
    a format field."""
    parts = template.split("{}")
    if len(parts) != 2:
        raise ClipimoError(f"prompt template {template!r} needs exactly one '{{}}' where the class name goes, "
                           f"found {len(parts) - 1}")
    return parts[0] + name + parts[1]


def format_prompts(templates: Sequence[str], classname: str) -> list[str]:
    """All prompts for one class: folder-style names ("sea_lion") become words ("sea lion")."""
    name = classname.replace("_", " ")
    return [fill_template(template, name) for template in templates]
