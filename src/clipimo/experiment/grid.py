"""The few-shot experiment grid: datasets x shots x seeds x methods, resumable, with result tables.

Each (dataset, shots, seed) cell (:mod:`.cell`) samples its support set, picks its validation set, pulls both
feature streams from the feature cache, runs every method and writes ``cells/<cell>.json``
atomically with the cell's fingerprint (``identity.cell_fingerprint``). A rerun reuses a cell only
when its fingerprint still matches, so a killed run loses at most the cell in progress and changed
data or settings are never reported from a stale cell. ``results.*`` describe every cell in the
folder, and a lock file keeps a second run out of it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.identity import array_digest
from ..defaults import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SHOTS
from ..errors import ClipimoError
from ..features.corrections import (
    IMAGEPCA_DEFAULT,
    build_correction,
    corrected_features,
    parse_corrections,
    parse_imagepca,
)
from ..features.corrections import fingerprint as correction_fingerprint
from ..features.extractor import FEATURE_FORMAT_VERSION, FeatureExtractor
from ..features.file import FeatureSet
from ..methods import official, proker
from ..methods.common import MethodOptions
from ..methods.evaluate import method_settings, run_methods
from ..methods.gda import GDA_ALPHAS
from ..methods.names import SHOTS_FREE, is_imo, require_adapter
from ..methods.registry import parse_methods
from ..methods.search import PAPER_GRID
from ..report.aggregate import summarise
from ..report.export import results_csv, write_clip_benchmark
from ..report.tables import results_markdown
from ..utils import fileio
from ..utils.lock import LOCK_NAME, folder_lock
from ..utils.log import Progress, duration, logger, tqdm_disable, warn_random_init
from ..utils.outputs import claim_folder
from ..version import __version__
from .cell import (
    CACHE_AUGMENT_PASSES,
    Cell,
    CellSpec,
    OpenedDataset,
    actual_shots,
    cell_features,
    feature_meta,
    open_source,
    plan_cell,
    relabel,
    save_cell_features,
    shared_folder_names,
)
from .fingerprint import fingerprint_changes


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
    # Corrected streams: the first fills the cells' "-imo" results; every one is also evaluated
    # (its "-imo" methods only) under the cell's "corrections".
    corrections: list[str] = field(default_factory=lambda: ["imo"])
    textpca_classnames: str | None = None
    imagepca_images: str | None = None
    imagepca: str = IMAGEPCA_DEFAULT
    templates: list[str] | None = None      # custom tasks only: prompt templates, one "{}" each
    classnames: dict[str, str] | None = None  # custom tasks only: folder name -> readable name
    # Settings of the methods beyond the paper (MethodOptions; the cell's seed orders Tip-F's batches).
    proker_views: str = "auto"
    proker_grid: str = "default"
    ape_config: str = "default"
    tipf_config: str = "default"
    tipf_batch: int = 256
    clap_batch: int = 256
    tda_config: str = "default"   # default, official or a YAML file (its settings enter the fingerprint)

    def __post_init__(self) -> None:
        self.method_options(seed=1, dataset=None)  # checks the values
        self.methods = parse_methods(self.methods)
        self.corrections = parse_corrections(self.corrections)
        parse_imagepca(self.imagepca)
        if not self.datasets:
            raise ClipimoError("no datasets given")
        if any(k < 1 for k in self.shots):
            raise ClipimoError(f"shots must be >= 1, got {self.shots}")
        self.cell  # checks the cell settings


    @property
    def cell(self) -> CellSpec:
        """What each cell of the grid reads from this configuration."""
        return CellSpec(self.validation, self.allow_test_tuning, self.augment_passes, self.skip_unreadable)

    def method_options(self, seed: int, dataset: str | None) -> MethodOptions:
        """The methods' options in the cell of ``seed`` on ``dataset`` (official configs look it up)."""
        return MethodOptions(seed=seed, tipf_batch=self.tipf_batch, proker_views=self.proker_views,
                             proker_grid=self.proker_grid, ape_config=self.ape_config,
                             tipf_config=self.tipf_config, clap_batch=self.clap_batch, tda_config=self.tda_config,
                             dataset=dataset)

    def method_fingerprint(self) -> dict[str, Any]:
        """The method settings every cell's result depends on (besides its seed and dataset)."""
        keys = ("proker_views", "proker_grid", "ape_config", "tipf_config", "tipf_batch", "clap_batch", "tda_config")
        fp = {k: getattr(self, k) for k in keys}
        if self.tda_config not in official.CONFIGS:  # a YAML file: what it says, not its path
            fp["tda_config"] = official.tda_config(self.method_options(1, None)).settings()
        return fp


def _fingerprint(cfg: RunConfig, extractor: FeatureExtractor) -> dict[str, Any]:
    """The settings one results folder holds; a run with other values is refused."""
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


def method_grids() -> dict[str, str]:
    """Digests of the searched hyper-parameter grids and the per-dataset configuration tables: a
    changed grid or table recomputes every cell."""
    tables = json.dumps([proker.DEFAULT_GRID, official.PROKER_OFFICIAL, proker.MAX_ALL_VIEWS,
                         *(dataclasses.asdict(c) for c in (official.APE_DEFAULT, official.TIPF_DEFAULT)),
                         {k: dataclasses.asdict(v) for k, v in official.APE_OFFICIAL.items()},
                         {k: dataclasses.asdict(v) for k, v in official.TIPF_OFFICIAL.items()},
                         official.TdaConfig().settings(), official.TDA_OFFICIAL], sort_keys=True)
    return {"paper_grid": array_digest(PAPER_GRID.alphas, PAPER_GRID.betas, PAPER_GRID.gammas),
            "gda_alphas": array_digest(GDA_ALPHAS),
            "beyond_configs": hashlib.sha256(tables.encode()).hexdigest()}


RUN_FORMAT = "clipimo-run"  # run.json's marker: how a folder is known as a run's (docs/files.md, "Output paths")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run record written by ``clipimo run`` (its format marker, or the
    fingerprint and config of records written before the marker existed)."""
    try:
        record = fileio.read_json(folder / "run.json", "run record")
    except ClipimoError:
        return False
    return record.get("format") == RUN_FORMAT or (isinstance(record.get("fingerprint"), dict)
                                                  and isinstance(record.get("config"), dict))


def _check_out_dir(out: Path, fingerprint: dict[str, Any]) -> None:
    """A results folder holds one run's files and one configuration: a folder of other files is
    refused (the tables would replace a user's results.csv or config.yaml), and mixing cells of two
    configurations would corrupt the tables."""
    claim_folder(out, is_run_folder, "a clipimo run folder (no run.json written by clipimo run)",
                 ignore=(LOCK_NAME,))
    path = out / "run.json"
    if path.is_file() and any((out / "cells").glob("*.json")):
        old = fileio.read_json(path, "run record").get("fingerprint") or {}
        if old != fingerprint:
            diff = sorted(k for k in fingerprint.keys() | old.keys() if old.get(k) != fingerprint.get(k))
            raise ClipimoError(
                f"{out} holds a run with another configuration (differs in: {', '.join(diff)}); "
                "use another --out folder"
            )


def _evaluate(feats: FeatureSet, methods: list[str], device: str, options: MethodOptions,
              shared: dict | None = None, key: tuple = ()) -> dict[str, Any]:
    """Run ``methods``; those that use neither support nor val (TDA) are taken from ``shared``
    under ``key`` + (method,) when another shots cell of the same dataset, seed and correction
    computed them, and stored there otherwise."""
    shared = {} if shared is None else shared
    fresh = [m for m in methods if m not in SHOTS_FREE or (*key, m) not in shared]
    ran = run_methods(feats, fresh, device=device, options=options) if fresh else {}
    out = {"methods": {name: r.as_dict() for name, r in ran.items()}, "settings": method_settings(ran)}
    for m in methods:
        if m in SHOTS_FREE:
            if m in ran:
                shared[(*key, m)] = (out["methods"][m], out["settings"].get(m))
            out["methods"][m], settings = shared[(*key, m)]
            if settings is not None:
                out["settings"][m] = settings
    out["methods"] = {m: out["methods"][m] for m in methods}
    return out


def _remember_shared(done: dict, cell: Cell, corrections: list[str], shared: dict) -> None:
    """A stored cell's support-free results, for the other shots cells of its dataset and seed."""
    for m in SHOTS_FREE & set(done.get("methods", {})):
        shared.setdefault((cell.dataset.source, cell.seed, corrections[0], m),
                          (done["methods"][m], done.get("settings", {}).get(m)))


def encode_cells(cfg: RunConfig, extractor: FeatureExtractor) -> None:
    """Fill the feature cache of every cell of the grid without evaluating: under torchrun every rank
    calls this (the shards of each image list are split across ranks), then rank 0 runs the grid
    from the cache."""
    for source in cfg.datasets:
        data = open_source(source, cfg.root, cfg.templates, cfg.classnames)
        for shots in cfg.shots:
            for seed in cfg.seeds:
                cell_features(extractor, plan_cell(data, shots, seed, cfg.cell, {}), cfg.cell)


def open_sources(cfg: RunConfig) -> dict[str, OpenedDataset]:
    """Every dataset of the grid opened (keyed by the name given and by its source) and the methods'
    per-dataset configurations checked: what can fail cheaply, done before a model loads."""
    opened: dict[str, OpenedDataset] = {}
    for source in cfg.datasets:
        data = open_source(source, cfg.root, cfg.templates, cfg.classnames)
        opened[source] = opened.setdefault(data.source, data)
        official.check_configs(cfg.method_options(1, data.splits.name), cfg.methods)
    return opened


def run_experiment(cfg: RunConfig, extractor: FeatureExtractor, out: str | Path, device: str = "cpu",
                   progress: bool | None = None, save_features: bool = False,
                   settings_yaml: str | None = None,
                   datasets: dict[str, OpenedDataset] | None = None) -> dict[str, Any]:
    """Run every missing or stale cell, then write results.json/.csv/.md in ``out`` describing every
    cell the folder holds; returns the results. The folder is locked against a concurrent run.
    ``settings_yaml`` (the command's settings) is saved as ``out/config.yaml`` once the folder is
    known to hold this configuration, so a killed run can be continued from it. ``datasets``: the
    grid's datasets from :func:`open_sources`, when the caller opened them before loading the model."""
    out = Path(out).expanduser()
    if "imo" in cfg.corrections:
        require_adapter(cfg.methods, extractor.adapter_hash is not None)
    opened = dict(datasets or open_sources(cfg))  # opened and their configurations checked: before any work
    with folder_lock(out):
        return _run_locked(cfg, extractor, out, device, progress, save_features, settings_yaml, opened)


def _run_locked(cfg: RunConfig, extractor: FeatureExtractor, out: Path, device: str, progress: bool | None,
                save_features: bool, settings_yaml: str | None, opened: dict[str, OpenedDataset]) -> dict[str, Any]:
    same_names: set[str] = set()  # folder names of two or more custom tasks: their labels carry a hash

    def dataset(source: str) -> OpenedDataset:
        if source not in opened:
            data = open_source(source, cfg.root, cfg.templates, cfg.classnames)
            opened[source] = opened.setdefault(data.source, relabel(data, same_names))
        return opened[source]

    maps = {name: build_correction(name, extractor, cfg.textpca_classnames, cfg.imagepca_images, cfg.imagepca)
            for name in cfg.corrections}
    fingerprint = {**_fingerprint(cfg, extractor), "corrections": [correction_fingerprint(c) for c in maps.values()]}
    _check_out_dir(out, fingerprint)
    fileio.write_json(out / "run.json", {"format": RUN_FORMAT, "fingerprint": fingerprint,
                                         "config": dataclasses.asdict(cfg)})
    if settings_yaml is not None:
        fileio.write_text(out / "config.yaml", settings_yaml)
    if extractor.backbone.random_init:
        warn_random_init()
    # how features are computed (e.g. how crops are seeded): cells of an older scheme are recomputed
    run_fp = {**fingerprint, "grids": method_grids(), "method_options": cfg.method_fingerprint(),
              "feature_format": FEATURE_FORMAT_VERSION}

    todo = {}
    for source in cfg.datasets:
        data = dataset(source)
        todo.update({(data.source, k, s): cfg.methods for k in cfg.shots for s in cfg.seeds})
    stored = {p.stem: fileio.read_json(p, "cell") for p in sorted((out / "cells").glob("*.json"))}
    stored_names = {}  # a stored cell is found by what it is, not by its file name (labels may change)
    for name, done in stored.items():
        key = (done.get("source"), done.get("shots"), done.get("seed"))
        stored_names[key] = name
        if key not in todo and key[0] is not None:  # an earlier run's cell: checked like the others
            todo[key] = list(done.get("methods", {}))
    same_names.update(shared_folder_names([*opened.values(), *stored.values()]))
    for data in opened.values():
        relabel(data, same_names)

    cells: list[dict] = []
    shared: dict[tuple, tuple[dict, dict | None]] = {}  # (source, seed, correction, method) -> (result, settings)
    bar = tqdm(list(todo.items()), desc="cells", disable=tqdm_disable(progress))
    steps = Progress("cell", len(todo))
    for (source, shots, seed), methods in bar:
        try:
            data = dataset(source)
        except ClipimoError as err:
            if source in {dataset(s).source for s in cfg.datasets}:
                raise
            logger.warning(f"leaving out the stored cells of {source} (shots {shots}, seed {seed}): {err}")
            steps.update(f"{source} shots {shots} seed {seed} left out")
            continue
        cell = plan_cell(data, shots, seed, cfg.cell, run_fp)
        bar.set_postfix_str(cell.name)
        logger.info(f"cell {steps.done + 1}/{steps.total}: {cell.name} started")
        began = time.perf_counter()
        old_name = stored_names.get((source, shots, seed))
        stored_cell = stored.get(old_name) if old_name else None
        cells.append(_run_cell(cell, methods, stored_cell, extractor, cfg, out, device, save_features, maps, shared))
        steps.update(f"{cell.name} " + ("reused (stored, up to date)" if cells[-1] is stored_cell else
                                        f"finished in {duration(time.perf_counter() - began)}"))
        if old_name and old_name != cell.name:  # stored under an earlier label: keep it under today's
            cells[-1] = {**cells[-1], "dataset": cell.dataset.label}
            fileio.write_json(out / "cells" / f"{cell.name}.json", cells[-1])
            (out / "cells" / f"{old_name}.json").unlink()
            logger.info(f"{old_name}: renamed {cell.name} (dataset label {cell.dataset.label})")
    order = {d: i for i, d in enumerate(dict.fromkeys(dataset(s).label for s in cfg.datasets))}
    cells.sort(key=lambda c: (order.get(c["dataset"], len(order)), c["dataset"], c["shots"], c["seed"]))
    results = {"meta": {**_results_meta(cfg, extractor, cells), "corrections": fingerprint["corrections"]},
               "cells": cells, "summary": summarise(cells)}
    write_results(out, results)
    return results


def _run_cell(cell: Cell, methods: list[str], done: dict | None, extractor: FeatureExtractor, cfg: RunConfig,
              out: Path, device: str, save_features: bool, maps: dict, shared: dict) -> dict:
    """Reuse a stored cell whose fingerprint matches; otherwise compute it (saying why). With
    several corrections every ``-imo`` method also runs on each of them (original features encoded once).
    TDA's results are computed once per dataset, seed and correction and shared by the shots cells
    (``shared``)."""
    todo = list(methods)
    if done is not None:
        changes = fingerprint_changes(done.get("fingerprint"), cell.fingerprint)
        if changes:
            logger.info(f"{cell.name}: recomputing, its stored result is stale (changed: {', '.join(changes)})")
            done = None
        else:
            _remember_shared(done, cell, cfg.corrections, shared)
            todo = [m for m in methods if m not in done["methods"]]
            if not todo:
                return done
            if cfg.corrections != ["imo"]:  # the per-correction tables cover every method: recompute them all
                todo, done = list(methods), None
    feats, record = cell_features(extractor, cell, cfg.cell, out / "supports")
    shots = actual_shots(cell, feats.cache_labels)
    if "short_classes" in shots:
        short = ", ".join(f"{c} ({n})" for c, n in list(shots["short_classes"].items())[:10])
        logger.warning(f"{cell.name}: {len(shots['short_classes'])} class(es) have fewer than {cell.shots} "
                       f"support images encoded (too few train images, or unreadable ones left out), so fewer "
                       f"shots: {short}")
    if "empty_classes" in shots:
        logger.warning(f"{cell.name}: class(es) {', '.join(shots['empty_classes'][:10])} have NO support image "
                       "left: the few-shot methods see them only through the text classifier")
    primary = corrected_features(feats, maps[cfg.corrections[0]])
    if save_features:
        save_cell_features(out / "features" / f"{cell.name}.npz", primary, extractor, cell, record,
                           correction=maps[cfg.corrections[0]])
    options = cfg.method_options(cell.seed, cell.dataset.splits.name)
    source = cell.dataset.source
    evaluated = _evaluate(primary, todo, device, options, shared, (source, cell.seed, cfg.corrections[0]))
    result = {
        "dataset": cell.dataset.label,
        "source": cell.dataset.source,
        "shots": cell.shots,
        "seed": cell.seed,
        "actual_shots": shots,
        "validation": record,
        "methods": {**(done or {}).get("methods", {}), **evaluated["methods"]},
        "settings": {**(done or {}).get("settings", {}), **evaluated["settings"]},
        "fingerprint": cell.fingerprint,
    }
    if cfg.corrections != ["imo"]:
        imo_methods = [m for m in methods if is_imo(m)]
        result["corrections"] = {cfg.corrections[0]: {
            "methods": {m: result["methods"][m] for m in imo_methods},
            "settings": {m: v for m, v in result["settings"].items() if m in imo_methods}}}
        for name in cfg.corrections[1:]:
            result["corrections"][name] = _evaluate(corrected_features(feats, maps[name]), imo_methods, device, options,
                                                    shared, (source, cell.seed, name))
    fileio.write_json(out / "cells" / f"{cell.name}.json", result)
    return result


def _results_meta(cfg: RunConfig, extractor: FeatureExtractor, cells: list[dict]) -> dict[str, Any]:
    methods = list(dict.fromkeys([*cfg.methods, *(m for c in cells for m in c["methods"])]))
    return {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter": feature_meta(extractor)["adapter"],
        "source": extractor.source,  # how to load the model again (files by path; not part of the fingerprint)
        "methods": methods,
        "datasets": list(dict.fromkeys(c["dataset"] for c in cells)),
        "shots": sorted({c["shots"] for c in cells}),
        "seeds": sorted({c["seed"] for c in cells}),
        "validation": cfg.validation or "default (full; heldout where no val split)",
        "templates": cfg.templates,
        "classnames": cfg.classnames,
        "tuned_on_test": any(c["validation"].get("tuned_on_test") for c in cells),
        "fewer_shots_than_k": sorted({f"{c['dataset']} k={c['shots']}" for c in cells if is_short(c)}),
        "clipimo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def is_short(cell: dict) -> bool:
    """Whether a cell had fewer train images than k for some class."""
    return bool((cell.get("actual_shots") or {}).get("short_classes"))


def write_results(out: Path, results: dict[str, Any]) -> None:
    """results.json/.csv/.md and one CLIP_benchmark-shaped JSON per cell and method."""
    fileio.write_json(out / "results.json", results)
    fileio.write_text(out / "results.csv", results_csv(results))
    fileio.write_text(out / "results.md", results_markdown(results, base=out))
    write_clip_benchmark(out, results)
