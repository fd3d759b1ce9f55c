"""The few-shot experiment grid: datasets x shots x seeds x methods, resumable, with result tables.

Each (dataset, shots, seed) cell samples its support set, picks its validation set, pulls both
feature streams from the feature cache, runs every method and writes ``cells/<cell>.json``
atomically. A rerun skips finished cells, so a killed run loses at most the cell in progress.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from . import __version__, _io
from .data import few_shot_support, open_dataset, validation_set
from .data.benchmarks import DatasetSplits
from .errors import ClipimoError
from .evaluate import evaluate_features
from .featurefile import FeatureSet, feature_arrays, save_features as save_feature_file, validate_features
from .features import FeatureExtractor
from .log import tqdm_disable, warn_random_init
from .methods import parse_methods
from .options import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SHOTS, as_list  # noqa: F401  (as_list re-exported)
from .report import results_markdown, summarise

CACHE_AUGMENT_PASSES = 10


@dataclass
class RunConfig:
    """What determines a run's results (the output folder records it and refuses another)."""

    root: str
    datasets: list[str]
    shots: list[int] = field(default_factory=lambda: list(DEFAULT_SHOTS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    validation: str | None = None
    allow_test_tuning: bool = False
    augment_passes: int = CACHE_AUGMENT_PASSES
    skip_unreadable: bool = False
    templates: list[str] | None = None      # custom tasks only: prompt templates, one "{}" each
    classnames: dict[str, str] | None = None  # custom tasks only: folder name -> readable name

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods)
        if not self.datasets:
            raise ClipimoError("no datasets given")
        if any(k < 1 for k in self.shots):
            raise ClipimoError(f"shots must be >= 1, got {self.shots}")
        if self.validation == "test" and not self.allow_test_tuning:
            raise ClipimoError("--validation test tunes hyper-parameters on the test split: add --allow-test-tuning "
                               "to confirm (the results then record tuned_on_test=true)")
        if self.augment_passes < 1:
            raise ClipimoError(f"cache keys need >= 1 augmentation pass, got {self.augment_passes}")


def cell_name(dataset: str, shots: int, seed: int) -> str:
    return f"{dataset}_k{shots}_s{seed}"


def require_adapter(methods: list[str], extractor: FeatureExtractor) -> None:
    imo = [m for m in methods if m.endswith("-imo")]
    if imo and extractor.adapter_hash is None:
        raise ClipimoError(f"methods {', '.join(imo)} need an IMO adapter (--adapter FILE)")


def feature_meta(extractor: FeatureExtractor) -> dict[str, Any]:
    """What a saved features file says about where its features came from."""
    return {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter": None if extractor.adapter_hash is None else {
            "path": str(extractor.adapter_path), "sha256": extractor.adapter_hash},
        "precision": extractor.precision,
    }


def open_task(name: str, cfg: RunConfig) -> DatasetSplits:
    """A benchmark or custom task folder with the run's prompt options."""
    return open_dataset(name, cfg.root, templates=cfg.templates, classnames=cfg.classnames)


def cell_features(
    extractor: FeatureExtractor, splits: DatasetSplits, shots: int, seed: int, cfg: RunConfig,
    index_dir: Path | None = None,
) -> tuple[FeatureSet, dict]:
    """The §8 features of one cell, and its validation record (which lists any skipped unreadable
    images). Encodes only what the cache lacks; with ``index_dir`` the support set is saved there."""
    index = None if index_dir is None else index_dir / f"{cell_name(splits.name, shots, seed)}.json"
    support = few_shot_support(splits, shots, seed, index_path=index)
    val_items, record = validation_set(
        splits, shots, seed, support, protocol=cfg.validation, allow_test_tuning=cfg.allow_test_tuning
    )
    label = cell_name(splits.name, shots, seed)
    skip = cfg.skip_unreadable
    keys = extractor.image_features(support, passes=cfg.augment_passes, seed=seed, skip_unreadable=skip,
                                    desc=f"{label} cache keys")
    val = extractor.image_features(val_items, skip_unreadable=skip, desc=f"{splits.name} val")
    test = extractor.image_features(splits.test, skip_unreadable=skip, desc=f"{splits.name} test")
    skipped = {name: sorted(f.skipped) for name, f in (("support", keys), ("val", val), ("test", test)) if f.skipped}
    if skipped:
        record = {**record, "skipped_unreadable": skipped}
    arrays = {"text_weights": extractor.text_weights(splits.classnames, splits.templates).numpy()}
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


def save_cell_features(path: str | Path, feats: FeatureSet, extractor: FeatureExtractor, splits: DatasetSplits,
                       shots: int, seed: int, record: dict) -> None:
    """One cell's §8 features file, with where it came from (backbone, adapter, task, prompts)."""
    meta = {**feature_meta(extractor), "dataset": splits.name, "shots": shots, "seed": seed, "validation": record,
            "classnames": splits.classnames, "templates": splits.templates}
    save_feature_file(path, {**feature_arrays(feats), "meta": np.array(json.dumps(meta))})


def _fingerprint(cfg: RunConfig, extractor: FeatureExtractor) -> dict[str, Any]:
    return {
        "backbone": extractor.backbone.identity,
        "adapter_sha256": extractor.adapter_hash,
        "precision": extractor.precision,
        "validation": cfg.validation,
        "allow_test_tuning": cfg.allow_test_tuning,
        "augment_passes": cfg.augment_passes,
        "skip_unreadable": cfg.skip_unreadable,
        "root": str(Path(cfg.root).resolve()),
        # prompts only when given, so folders of runs without them still resume
        **{k: v for k, v in (("templates", cfg.templates), ("classnames", cfg.classnames)) if v},
    }


def _check_out_dir(out: Path, fingerprint: dict[str, Any]) -> None:
    """A results folder holds one configuration: mixing cells of two would corrupt the tables."""
    path = out / "run.json"
    if path.is_file() and any((out / "cells").glob("*.json")):
        old = json.loads(path.read_text())["fingerprint"]
        if old != fingerprint:
            diff = sorted(k for k in fingerprint.keys() | old.keys() if old.get(k) != fingerprint.get(k))
            raise ClipimoError(
                f"{out} holds a run with another configuration (differs in: {', '.join(diff)}); "
                "use another --out folder"
            )


def _cells(cfg: RunConfig, out: Path, progress: bool | None) -> Iterator[tuple[DatasetSplits, int, int, Path]]:
    """Every (splits, shots, seed, cell json path) of the grid, in order, with a progress bar."""
    todo = [(d, k, s) for d in cfg.datasets for k in cfg.shots for s in cfg.seeds]
    bar = tqdm(todo, desc="cells", disable=tqdm_disable(progress))
    splits_cache: dict[str, DatasetSplits] = {}
    for dataset, shots, seed in bar:
        bar.set_postfix_str(cell_name(dataset, shots, seed))
        if dataset not in splits_cache:
            splits_cache[dataset] = open_task(dataset, cfg)
        splits = splits_cache[dataset]
        yield splits, shots, seed, out / "cells" / f"{cell_name(splits.name, shots, seed)}.json"


def _finished_cell(path: Path, methods: list[str]) -> dict | None:
    """The cell's record when it already holds every method in ``methods`` (restricted to them)."""
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if not set(methods) <= set(done["methods"]):
        return None
    done["methods"] = {m: done["methods"][m] for m in methods}
    return done


def encode_cells(cfg: RunConfig, extractor: FeatureExtractor, out: str | Path, progress: bool | None = False) -> None:
    """Fill the feature cache of every unfinished cell without evaluating: under torchrun every rank
    calls this (the shards of each image list are split across ranks), then rank 0 runs the grid."""
    out = Path(out)
    for splits, shots, seed, path in _cells(cfg, out, progress if extractor.env.is_main else False):
        if not _finished_cell(path, cfg.methods):
            cell_features(extractor, splits, shots, seed, cfg, out / "supports")


def run_experiment(cfg: RunConfig, extractor: FeatureExtractor, out: str | Path, device: str = "cpu",
                   progress: bool | None = None, save_features: bool = False) -> dict[str, Any]:
    """Run every missing cell, then write results.json/.csv/.md in ``out``; returns the results."""
    out = Path(out)
    require_adapter(cfg.methods, extractor)
    fingerprint = _fingerprint(cfg, extractor)
    _check_out_dir(out, fingerprint)
    _io.write_json(out / "run.json", {"fingerprint": fingerprint, "config": dataclasses.asdict(cfg)})
    if extractor.backbone.random_init:
        warn_random_init()

    cells: list[dict] = []
    for splits, shots, seed, path in _cells(cfg, out, progress):
        done = _finished_cell(path, cfg.methods)
        if done:
            cells.append(done)
            continue
        feats, record = cell_features(extractor, splits, shots, seed, cfg, out / "supports")
        if save_features:
            save_cell_features(out / "features" / f"{cell_name(splits.name, shots, seed)}.npz", feats, extractor,
                               splits, shots, seed, record)
        cell = {
            "dataset": splits.name,
            "shots": shots,
            "seed": seed,
            "validation": record,
            "methods": evaluate_features(feats, cfg.methods, device=device),
        }
        _io.write_json(path, cell)
        cells.append(cell)

    results = {
        "meta": {
            "backbone": extractor.backbone.identity,
            "random_init": extractor.backbone.random_init,
            "adapter": feature_meta(extractor)["adapter"],
            "methods": cfg.methods,
            "datasets": sorted({c["dataset"] for c in cells}, key=[c["dataset"] for c in cells].index),
            "shots": cfg.shots,
            "seeds": cfg.seeds,
            "validation": cfg.validation or "default (full; heldout where no val split)",
            "templates": cfg.templates,
            "classnames": cfg.classnames,
            "tuned_on_test": any(c["validation"].get("tuned_on_test") for c in cells),
            "clipimo_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "cells": cells,
        "summary": summarise(cells),
    }
    write_results(out, results)
    return results


def results_csv(results: dict[str, Any]) -> str:
    """One row per (dataset, shots, seed, method) with accuracies and chosen hyper-parameters."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "shots", "seed", "method", "val_acc", "test_acc", "alpha", "beta", "gamma", "validation", "random_init"])
    for c in results["cells"]:
        for m, r in c["methods"].items():
            h = r["hparams"]
            writer.writerow([c["dataset"], c["shots"], c["seed"], m, f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}",
                             h.get("alpha", ""), h.get("beta", ""), h.get("gamma", ""), c["validation"]["protocol"],
                             results["meta"]["random_init"]])
    return buf.getvalue()


def write_results(out: Path, results: dict[str, Any]) -> None:
    _io.write_json(out / "results.json", results)
    _io.write_text(out / "results.csv", results_csv(results))
    _io.write_text(out / "results.md", results_markdown(results))
