"""Evaluation from Python without the internals: a task, shots and seed in, the CLI's numbers out.

>>> import clipimo
>>> res = clipimo.evaluate_task("my_task/", shots=4, seed=1, model="ViT-B-16", pretrained="openai",
...                             adapter="adapter.safetensors", methods="zs,tip,tip-imo")
>>> res["tip-imo"]["test_acc"]
>>> import pandas as pd; df = pd.DataFrame(clipimo.load_results("runs/eval/results.json"))

The numbers are those of ``clipimo run`` / ``clipimo features --task`` + ``clipimo evaluate``:
the same cell logic (:mod:`clipimo.experiment.grid`) and the same feature cache.
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .defaults import DEFAULT_METHODS
from .errors import ClipimoError

if TYPE_CHECKING:
    from .data.benchmarks import DatasetSplits
    from .experiment.cell import Cell
    from .features.extractor import FeatureExtractor
    from .features.file import FeatureSet
    from .utils.distributed import DistEnv

PathLike = str | os.PathLike


def build_extractor(model: str = "ViT-B-16", pretrained: str | None = None, adapter: PathLike | None = None,
                    device: str = "cpu", cache_dir: PathLike | None = None, batch_size: int = 32,
                    workers: int | None = None, precision: str = "fp32", progress: bool | None = None,
                    strict_backbone: bool = True, shard_size: int | None = None,
                    env: DistEnv | None = None) -> FeatureExtractor:
    """A :class:`clipimo.FeatureExtractor` on ``model``/``pretrained`` (random init without weights:
    the RANDOM-INIT banner is logged) with the adapter file, if any. ``precision``: fp32 or bf16.
    ``env`` (a torchrun process, see :mod:`clipimo.utils.distributed`) sets the device and shares the shards."""
    from .features.extractor import DEFAULT_SHARD_SIZE, FeatureExtractor, check_sizes
    from .model.backbone import load_clip
    from .utils.device import resolve_device
    from .utils.log import warn_random_init

    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    check_sizes(batch_size, shard_size, workers)  # before the backbone is loaded
    backbone = load_clip(model, pretrained, device=env.device if env is not None else resolve_device(device))
    if backbone.random_init and (env is None or env.is_main):
        warn_random_init()
    return FeatureExtractor(backbone, adapter=adapter, cache_dir=cache_dir, batch_size=batch_size,
                            num_workers=workers, precision=precision, progress=progress,
                            strict_backbone=strict_backbone, shard_size=shard_size, env=env)


def prompt_options(templates: Sequence[str] | PathLike | None,
                   classnames: Mapping[str, str] | PathLike | None) -> tuple[list[str] | None, dict | None]:
    """Templates and readable class names given as values or as files (see :mod:`clipimo.data.prompts`)."""
    from .data.prompts import read_classnames, read_templates

    if isinstance(templates, (str, os.PathLike)):
        templates = read_templates(templates)
    if isinstance(classnames, (str, os.PathLike)):
        classnames = read_classnames(classnames)
    return (None if templates is None else list(templates)), (None if classnames is None else dict(classnames))


@dataclass
class TaskFeatures:
    """The features of one (task, shots, seed) cell, with what produced them."""

    features: FeatureSet
    cell: Cell             # the task, shots, seed and the sampled support and validation sets
    record: dict           # the validation record (protocol, sizes, skipped images)
    extractor: FeatureExtractor

    @property
    def splits(self) -> DatasetSplits:
        return self.cell.dataset.splits

    def save(self, path: PathLike) -> None:
        """Write the evaluable features file (``clipimo evaluate --features PATH`` reads it)."""
        from .experiment.cell import save_cell_features

        save_cell_features(path, self.features, self.extractor, self.cell, self.record)


def task_features(task: str, shots: int, seed: int, *, extractor: FeatureExtractor | None = None, root: PathLike = ".",
                  validation: str | None = None, allow_test_tuning: bool = False, augment_passes: int | None = None,
                  templates: Sequence[str] | PathLike | None = None,
                  classnames: Mapping[str, str] | PathLike | None = None, skip_unreadable: bool = False,
                  **extractor_options: Any) -> TaskFeatures:
    """Encode one cell of ``task`` (a custom task folder or a benchmark name under ``root``): the
    ``shots``-per-class support of sampling ``seed`` (cache keys: ``augment_passes`` augmented views),
    the validation set and the test split, both streams. ``extractor_options`` go to
    :func:`build_extractor` when no ``extractor`` is given."""
    from .experiment.cell import CACHE_AUGMENT_PASSES, CellSpec, cell_features, open_source, plan_cell

    templates, classnames = prompt_options(templates, classnames)
    spec = CellSpec(validation, allow_test_tuning,
                    CACHE_AUGMENT_PASSES if augment_passes is None else augment_passes, skip_unreadable)
    data = open_source(str(task), str(root), templates, classnames)  # a bad name fails before a model loads
    extractor = extractor or build_extractor(**extractor_options)
    cell = plan_cell(data, shots, seed, spec, {})
    feats, record = cell_features(extractor, cell, spec)
    return TaskFeatures(feats, cell, record, extractor)


def evaluate_task(task: str, shots: int, seed: int, methods: str | Sequence[str] = DEFAULT_METHODS,
                  device: str = "cpu", **options: Any) -> dict[str, dict]:
    """``{method: {"test_acc", "val_acc", "hparams"}}`` of one cell, as ``clipimo run`` records it.

    ``options``: those of :func:`task_features` (``root``, ``validation``, ``templates``, ...) and of
    :func:`build_extractor` (``model``, ``pretrained``, ``adapter``, ``cache_dir``, ...)."""
    from .methods.evaluate import evaluate_features
    from .methods.names import require_adapter
    from .methods.registry import parse_methods

    names = parse_methods(methods)
    if "extractor" not in options:
        require_adapter(names, options.get("adapter") is not None)  # before the model loads
        options["extractor"] = build_extractor(device=device, **{k: options.pop(k) for k in list(options)
                                                                 if k in _EXTRACTOR_OPTIONS})
    require_adapter(names, options["extractor"].adapter_hash is not None)
    cell = task_features(task, shots, seed, **options)
    return evaluate_features(cell.features, names, device=device)


# What evaluate_task passes on to build_extractor (its own device; no torchrun env from Python).
_EXTRACTOR_OPTIONS = set(inspect.signature(build_extractor).parameters) - {"device", "env"}


def load_results(path: PathLike) -> list[dict[str, Any]]:
    """Flat records, one per method and cell, from a ``clipimo run`` results.json or a
    ``clipimo evaluate --json`` file: ``pandas.DataFrame(load_results(path))`` is the table.

    Columns: dataset, shots, seed (run results only), method, val_acc, test_acc, the chosen
    hyper-parameters by name (alpha, beta, gamma, ...), validation protocol, backbone model and
    weights, random_init.
    """
    from .report.records import validate_results

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClipimoError(f"results file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipimoError(f"results file {path} is not valid JSON: {err}") from err
    if isinstance(data, dict) and "cells" in data:
        results = validate_results(data, str(path))  # read once: a run's results.json
        meta = results["meta"]
        backbone = meta.get("backbone") or {}
        common = {"model": backbone.get("model"), "weights": backbone.get("weights"),
                  "random_init": meta.get("random_init")}
        return [{"dataset": c["dataset"], "shots": c["shots"], "seed": c["seed"], **_method_record(m, r),
                 "validation": c["validation"].get("protocol"), **common}
                for c in results["cells"] for m, r in c["methods"].items()]
    if isinstance(data, dict) and data and all(isinstance(r, dict) and "test_acc" in r for r in data.values()):
        return [_method_record(m, r) for m, r in data.items()]
    raise ClipimoError(f"results file {path}: neither a 'clipimo run' results.json (with 'cells') nor a "
                       "'clipimo evaluate --json' file ({method: {test_acc, val_acc, hparams}})")


def _method_record(method: str, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"method": method, "val_acc": result["val_acc"], "test_acc": result["test_acc"],
            **result.get("hparams", {})}
