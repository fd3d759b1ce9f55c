"""Few-shot methods: the registry (:mod:`.registry`), the torch-free vocabulary (:mod:`.names`), the
methods themselves, their search, metrics, evaluation and saved classifier.

Names are imported on first use, so reading the vocabulary does not load torch.
"""
from ..utils.lazy import lazy_exports

_EXPORTS = {
    "CACHE_VARIANTS": "registry",
    "METHODS": "registry",
    "TAKES_OPTIONS": "registry",
    "parse_methods": "registry",
    "run_method": "registry",
    "MethodOptions": "common",
    "MethodResult": "common",
    "Problem": "common",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
