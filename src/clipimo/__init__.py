"""clipimo: training-free few-shot CLIP adaptation with intra-modal overlap correction (IMO).

Top-level names are imported on first use, so ``import clipimo`` (and ``clipimo --help``) does
not load torch or open_clip.
"""
from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbone",
    "load_clip": "backbone",
    "adapters_enabled": "adapter",
    "add_adapters": "adapter",
    "load_adapters": "adapter",
    "save_adapters": "adapter",
    "LabelledImage": "data.items",
    "FeatureExtractor": "features",
    "ImageFeatures": "features",
    "Classifier": "classifier",
    "load_classifier": "classifier",
    "evaluate_task": "api",
    "task_features": "api",
    "load_results": "api",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
