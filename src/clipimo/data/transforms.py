"""Image transforms of the protocol beyond the backbone's own eval transform (``Backbone.preprocess``)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

CACHE_AUG_SCALE = (0.5, 1.0)


def cache_augmentation(size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Support-image augmentation for cache keys: RandomResizedCrop(scale 0.5-1, bicubic) + flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=CACHE_AUG_SCALE, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )



def seeded_transform(transform: Callable, image: Any, seed: int) -> Any:
    """Apply a random transform under its own seed, leaving the caller's torch RNG stream untouched:
    an image's augmentation then depends on its seed only, not on batching, workers or processes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)
