"""clipimo: training-free few-shot CLIP adaptation with intra-modal overlap correction (IMO).

Top-level names are imported on first use, so ``import clipimo`` (and ``clipimo --help``) does
not load torch or open_clip.
"""
from .utils.lazy import lazy_exports
from .version import __version__ as __version__

_EXPORTS = {
    "Backbone": "model.backbone",
    "load_clip": "model.backbone",
    "adapters_enabled": "model.adapter",
    "add_adapters": "model.adapter",
    "load_adapters": "model.adapter",
    "save_adapters": "model.adapter",
    "LabelledImage": "data.items",
    "FeatureExtractor": "features.extractor",
    "ImageFeatures": "features.extractor",
    "Classifier": "methods.classifier",
    "load_classifier": "methods.classifier",
    "evaluate_task": "api",
    "task_features": "api",
    "load_results": "api",
}
__all__ = sorted([*_EXPORTS, "__version__"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
