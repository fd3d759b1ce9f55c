"""One few-shot cell: a (dataset, shots, seed) triple's support and validation sets, their
fingerprint, and both feature streams of its support, validation and test images.

The grid (:mod:`.grid`), distribution shift (:mod:`.shift`) and the Python API build their cells here
from a :class:`CellSpec`, the few settings a cell depends on.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import few_shot_support, open_dataset, save_support_index, validation_set
from ..data.benchmarks import DatasetSplits
from ..data.identity import dataset_identity, dataset_label
from ..defaults import MAX_PASSES
from ..errors import ClipimoError
from ..features.corrections import LinearCorrection, map_arrays
from ..features.corrections import fingerprint as correction_fingerprint
from ..features.extractor import FeatureExtractor
from ..features.file import FeatureSet, feature_arrays, validate_features
from ..features.file import save_features as save_feature_file
from .fingerprint import cell_fingerprint

CACHE_AUGMENT_PASSES = 10


@dataclass(frozen=True)
class CellSpec:
    """The settings one cell reads: how its validation set is chosen and how its images are encoded.
    ``clipimo run``, ``shift`` and the Python API each build one; the cell needs nothing else."""

    validation: str | None = None
    allow_test_tuning: bool = False
    augment_passes: int = CACHE_AUGMENT_PASSES
    skip_unreadable: bool = False

    def __post_init__(self) -> None:
        if self.validation == "test" and not self.allow_test_tuning:
            raise ClipimoError("--validation test tunes hyper-parameters on the test split: add --allow-test-tuning "
                               "to confirm (the results then record tuned_on_test=true)")
        if not 1 <= self.augment_passes <= MAX_PASSES:
            raise ClipimoError(f"--augment-passes must be from 1 to {MAX_PASSES} (each keeps a view of every support "
                               f"image), got {self.augment_passes}")


def cell_name(dataset: str, shots: int, seed: int) -> str:
    return f"{dataset}_k{shots}_s{seed}"


def feature_meta(extractor: FeatureExtractor) -> dict[str, Any]:
    """What a saved features file says about where its features came from."""
    return {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter": None if extractor.adapter_hash is None else {
            "path": str(extractor.adapter_path), "sha256": extractor.adapter_hash},
        "precision": extractor.precision,
        "source": extractor.source,
    }


@dataclass
class OpenedDataset:
    source: str  # benchmark name or resolved task folder: how a later run reopens it
    splits: DatasetSplits
    label: str
    identity: dict


@dataclass
class Cell:
    """One (dataset, shots, seed) cell's inputs: its images and the fingerprint they give."""

    dataset: OpenedDataset
    shots: int
    seed: int
    support: list
    val_items: list
    record: dict
    fingerprint: dict

    @property
    def name(self) -> str:
        return cell_name(self.dataset.label, self.shots, self.seed)


def open_source(source: str, root: str, templates: list[str] | None = None,
                classnames: dict[str, str] | None = None) -> OpenedDataset:
    """A benchmark name or custom task folder (with its own prompts, if given), with its unique
    label and identity."""
    custom = Path(source).expanduser().is_dir()
    splits = open_dataset(source, root, templates=templates, classnames=classnames)
    return OpenedDataset(splits.root if custom else splits.name, splits, dataset_label(splits),
                         dataset_identity(splits))


def _custom_folder(source: Any) -> str | None:
    """The folder name of a custom task's source (a resolved folder path), None for a benchmark name."""
    return Path(source).name if isinstance(source, str) and os.path.isabs(source) else None


def shared_folder_names(datasets: Iterable[OpenedDataset | dict]) -> set[str]:
    """Folder names that two or more custom tasks (opened datasets or stored cells) share."""
    sources = {d.source if isinstance(d, OpenedDataset) else d.get("source") for d in datasets}
    names = Counter(n for n in map(_custom_folder, sources) if n)
    return {n for n, count in names.items() if count > 1}


def relabel(data: OpenedDataset, shared: set[str]) -> OpenedDataset:
    """A custom task is labelled by its folder name, with a hash of its location when another task in
    the same results shares that name; returns ``data``, relabelled in place."""
    if _custom_folder(data.source) is not None:
        data.label = dataset_label(data.splits, disambiguate=_custom_folder(data.source) in shared)
    return data


def plan_cell(data: OpenedDataset, shots: int, seed: int, spec: CellSpec, run_fp: dict) -> Cell:
    """Sample the support and validation sets of a cell and fingerprint everything it depends on."""
    if shots < 1:
        raise ClipimoError(f"shots must be >= 1, got {shots}")
    splits = data.splits
    support = few_shot_support(splits, shots, seed)
    val_items, record = validation_set(
        splits, shots, seed, support, protocol=spec.validation, allow_test_tuning=spec.allow_test_tuning
    )
    fp = cell_fingerprint(run_fp, data.identity, shots, seed, support, val_items, record, splits.test)
    return Cell(data, shots, seed, support, val_items, record, fp)


def actual_shots(cell: Cell, encoded_labels: np.ndarray) -> dict[str, Any]:
    """Support images per class among those actually encoded (``encoded_labels``: the cache keys'
    labels, so images left out by --skip-unreadable do not count); classes with fewer than k are
    listed by name, and classes left with none also under ``empty_classes``."""
    counts = np.bincount(np.asarray(encoded_labels, dtype=np.int64), minlength=cell.dataset.splits.num_classes)
    names = cell.dataset.splits.classnames
    short = {names[c]: int(n) for c, n in enumerate(counts) if n < cell.shots}
    empty = [names[c] for c, n in enumerate(counts) if n == 0]
    return {"min": int(counts.min()), "max": int(counts.max()), **({"short_classes": short} if short else {}),
            **({"empty_classes": empty} if empty else {})}


def cell_features(extractor: FeatureExtractor, cell: Cell, spec: CellSpec,
                  index_dir: Path | None = None) -> tuple[FeatureSet, dict]:
    """The features of one cell (both streams: support views and keys, validation, test, text weights), and its validation record (which lists any skipped unreadable
    images); with ``index_dir`` the support set is written to ``index_dir/<cell>.json``. Encodes
    only what the cache lacks."""
    splits, label, record = cell.dataset.splits, cell.name, cell.record
    if index_dir is not None:
        save_support_index(index_dir / f"{label}.json", splits, cell.shots, cell.seed, cell.support)
    skip = spec.skip_unreadable
    keys = extractor.image_features(cell.support, passes=spec.augment_passes, seed=cell.seed, skip_unreadable=skip,
                                    desc=f"{label} cache keys")
    val = extractor.image_features(cell.val_items, skip_unreadable=skip, desc=f"{label} val")
    test = extractor.image_features(splits.test, skip_unreadable=skip, desc=f"{label} test")
    skipped = {name: sorted(f.skipped) for name, f in (("support", keys), ("val", val), ("test", test)) if f.skipped}
    if skipped:
        record = {**record, "skipped_unreadable": skipped}
    arrays = {k: v.numpy() for k, v in extractor.text_features(splits.classnames, splits.templates).items()}
    for prefix, feats in (("cache_keys", keys), ("val_feats", val), ("test_feats", test)):
        arrays[prefix] = feats.original.numpy()
        arrays[f"{prefix}_corrected"] = feats.corrected_or_original.numpy()
    arrays["cache_labels"], arrays["val_labels"], arrays["test_labels"] = (
        f.labels.numpy() for f in (keys, val, test)
    )
    arrays["cache_views"] = keys.views.numpy()
    arrays["cache_views_corrected"] = keys.views_corrected_or_original.numpy()
    arrays["logit_scale"], arrays["logit_bias"] = map(np.array, extractor.backbone.logit_scale_bias)
    return validate_features(arrays, f"features of {label}"), record


def save_cell_features(path: str | Path, feats: FeatureSet, extractor: FeatureExtractor, cell: Cell,
                       record: dict, correction: LinearCorrection | None = None) -> None:
    """One cell's features file, with where it came from (backbone, adapter, task, prompts, and
    the correction filling the corrected stream: ``corrections.fingerprint``, and its map, so a
    classifier saved from the file corrects new images alike)."""
    splits = cell.dataset.splits
    meta = {**feature_meta(extractor), "dataset": cell.dataset.label, "shots": cell.shots, "seed": cell.seed,
            "validation": record, "classnames": splits.classnames, "templates": splits.templates,
            "correction": correction_fingerprint(correction)}
    save_feature_file(path, {**feature_arrays(feats), **map_arrays(correction), "meta": np.array(json.dumps(meta))})
