"""clipimo: training-free few-shot CLIP adaptation with intra-modal overlap correction (IMO)."""
__version__ = "0.1.0"

from .adapter import adapters_enabled, add_adapters, load_adapters, save_adapters
from .backbone import Backbone, load_clip
from .data.items import LabelledImage
from .features import FeatureExtractor, ImageFeatures

__all__ = [
    "Backbone",
    "FeatureExtractor",
    "ImageFeatures",
    "LabelledImage",
    "adapters_enabled",
    "add_adapters",
    "load_adapters",
    "load_clip",
    "save_adapters",
]
