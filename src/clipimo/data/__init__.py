"""Datasets, splits, few-shot sampling and validation protocols."""
from .benchmarks import DatasetSplits, load_dataset
from .custom import load_custom_dataset, open_dataset
from .fewshot import (
    few_shot_support, load_support_index, sample_few_shot, save_support_index, stable_rng,
)
from .generic import read_csv_list, read_image_folder
from .items import LabelledImage
from .openimages import build_open_images_subset
from .registry import BENCHMARKS, DATASETS, SHIFT_SETS, DatasetSpec, get_spec
from .templates import IMAGENET_TEMPLATES, format_prompts
from .validation import PROTOCOLS, default_protocol, validation_set

__all__ = [
    "BENCHMARKS", "DATASETS", "DatasetSpec", "DatasetSplits", "IMAGENET_TEMPLATES",
    "LabelledImage", "PROTOCOLS", "SHIFT_SETS", "build_open_images_subset", "default_protocol",
    "few_shot_support", "format_prompts", "get_spec", "load_custom_dataset", "load_dataset",
    "load_support_index", "open_dataset", "read_csv_list", "read_image_folder", "sample_few_shot",
    "save_support_index", "stable_rng", "validation_set",
]
