"""Datasets, splits, few-shot sampling and validation protocols."""
from ..utils.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DatasetSplits", "load_dataset"), "benchmarks"),
    **dict.fromkeys(("load_custom_dataset", "open_dataset"), "custom"),
    **dict.fromkeys(("few_shot_support", "load_support_index", "sample_few_shot", "save_support_index",
                     "stable_rng"), "fewshot"),
    **dict.fromkeys(("read_csv_list", "read_image_folder"), "generic"),
    "LabelledImage": "items",
    "build_open_images_subset": "openimages",
    **dict.fromkeys(("BENCHMARKS", "DATASETS", "SHIFT_SETS", "DatasetSpec", "get_spec"), "registry"),
    **dict.fromkeys(("IMAGENET_TEMPLATES", "format_prompts"), "templates"),
    **dict.fromkeys(("PROTOCOLS", "default_protocol", "validation_set"), "validation"),
}
# Submodules load on first use: the command line reads the registry without numpy.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "BENCHMARKS", "DATASETS", "DatasetSpec", "DatasetSplits", "IMAGENET_TEMPLATES",
    "LabelledImage", "PROTOCOLS", "SHIFT_SETS", "build_open_images_subset", "default_protocol",
    "few_shot_support", "format_prompts", "get_spec", "load_custom_dataset", "load_dataset",
    "load_support_index", "open_dataset", "read_csv_list", "read_image_folder", "sample_few_shot",
    "save_support_index", "stable_rng", "validation_set",
]
