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
from ..features.extractor import FeatureExtractor
from ..features.file import FeatureSet
from ..methods import official, proker
from ..methods.common import MethodOptions
from ..methods.evaluate import method_settings, run_methods
from ..methods.gda import GDA_ALPHAS
from ..methods.names import is_imo
from ..methods.registry import parse_methods
from ..methods.search import PAPER_GRID
from ..report.aggregate import summarise
from ..report.export import results_csv, write_clip_benchmark
from ..report.tables import results_markdown
from ..utils import fileio
from ..utils.lock import LOCK_NAME, folder_lock
from ..utils.log import logger, tqdm_disable, warn_random_init
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
    require_adapter,
    save_cell_features,
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
                             tipf_config=self.tipf_config, dataset=dataset)

    def method_fingerprint(self) -> dict[str, Any]:
        """The method settings every cell's result depends on (besides its seed and dataset)."""
        return {k: getattr(self, k) for k in ("proker_views", "proker_grid", "ape_config", "tipf_config", "tipf_batch")}


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
                         {k: dataclasses.asdict(v) for k, v in official.TIPF_OFFICIAL.items()}], sort_keys=True)
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


def _evaluate(feats: FeatureSet, methods: list[str], device: str, options: MethodOptions) -> dict[str, Any]:
    ran = run_methods(feats, methods, device=device, options=options)
    return {"methods": {name: r.as_dict() for name, r in ran.items()}, "settings": method_settings(ran)}


def encode_cells(cfg: RunConfig, extractor: FeatureExtractor) -> None:
    """Fill the feature cache of every cell of the grid without evaluating: under torchrun every rank
    calls this (the shards of each image list are split across ranks), then rank 0 runs the grid
    from the cache."""
    for source in cfg.datasets:
        data = open_source(source, cfg.root, cfg.templates, cfg.classnames)
        for shots in cfg.shots:
            for seed in cfg.seeds:
                cell_features(extractor, plan_cell(data, shots, seed, cfg.cell, {}), cfg.cell)


def run_experiment(cfg: RunConfig, extractor: FeatureExtractor, out: str | Path, device: str = "cpu",
                   progress: bool | None = None, save_features: bool = False,
                   settings_yaml: str | None = None) -> dict[str, Any]:
    """Run every missing or stale cell, then write results.json/.csv/.md in ``out`` describing every
    cell the folder holds; returns the results. The folder is locked against a concurrent run.
    ``settings_yaml`` (the command's settings) is saved as ``out/config.yaml`` once the folder is
    known to hold this configuration, so a killed run can be continued from it."""
    out = Path(out).expanduser()
    if "imo" in cfg.corrections:
        require_adapter(cfg.methods, extractor)
    with folder_lock(out):
        return _run_locked(cfg, extractor, out, device, progress, save_features, settings_yaml)


def _run_locked(cfg: RunConfig, extractor: FeatureExtractor, out: Path, device: str, progress: bool | None,
                save_features: bool, settings_yaml: str | None) -> dict[str, Any]:
    opened: dict[str, OpenedDataset] = {}

    def dataset(source: str) -> OpenedDataset:
        if source not in opened:
            data = open_source(source, cfg.root, cfg.templates, cfg.classnames)
            opened[source] = opened.setdefault(data.source, data)
        return opened[source]

    for source in cfg.datasets:  # before anything is encoded or written
        official.check_configs(cfg.method_options(1, dataset(source).splits.name), cfg.methods)
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
    run_fp = {**fingerprint, "grids": method_grids(), "method_options": cfg.method_fingerprint()}

    todo = {}
    for source in cfg.datasets:
        data = dataset(source)
        todo.update({(data.source, k, s): cfg.methods for k in cfg.shots for s in cfg.seeds})
    stored = {p.stem: fileio.read_json(p, "cell") for p in sorted((out / "cells").glob("*.json"))}
    for name, done in stored.items():
        key = (done.get("source"), done.get("shots"), done.get("seed"))
        if key not in todo and key[0] is not None:  # an earlier run's cell: checked like the others
            todo[key] = list(done.get("methods", {}))

    cells: list[dict] = []
    bar = tqdm(list(todo.items()), desc="cells", disable=tqdm_disable(progress))
    for (source, shots, seed), methods in bar:
        try:
            data = dataset(source)
        except ClipimoError as err:
            if source in {dataset(s).source for s in cfg.datasets}:
                raise
            logger.warning(f"leaving out the stored cells of {source} (shots {shots}, seed {seed}): {err}")
            continue
        cell = plan_cell(data, shots, seed, cfg.cell, run_fp)
        bar.set_postfix_str(cell.name)
        cells.append(_run_cell(cell, methods, stored.get(cell.name), extractor, cfg, out, device, save_features,
                               maps))
    order = {d: i for i, d in enumerate(dict.fromkeys(dataset(s).label for s in cfg.datasets))}
    cells.sort(key=lambda c: (order.get(c["dataset"], len(order)), c["dataset"], c["shots"], c["seed"]))
    results = {"meta": {**_results_meta(cfg, extractor, cells), "corrections": fingerprint["corrections"]},
               "cells": cells, "summary": summarise(cells)}
    write_results(out, results)
    return results


def _run_cell(cell: Cell, methods: list[str], done: dict | None, extractor: FeatureExtractor, cfg: RunConfig,
              out: Path, device: str, save_features: bool, maps: dict) -> dict:
    """Reuse a stored cell whose fingerprint matches; otherwise compute it (saying why). With
    several corrections every ``-imo`` method also runs on each of them (original features encoded once)."""
    todo = list(methods)
    if done is not None:
        changes = fingerprint_changes(done.get("fingerprint"), cell.fingerprint)
        if changes:
            logger.info(f"{cell.name}: recomputing, its stored result is stale (changed: {', '.join(changes)})")
            done = None
        else:
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
    evaluated = _evaluate(primary, todo, device, options)
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
            result["corrections"][name] = _evaluate(corrected_features(feats, maps[name]), imo_methods, device, options)
    fileio.write_json(out / "cells" / f"{cell.name}.json", result)
    return result


def _results_meta(cfg: RunConfig, extractor: FeatureExtractor, cells: list[dict]) -> dict[str, Any]:
    methods = list(dict.fromkeys([*cfg.methods, *(m for c in cells for m in c["methods"])]))
    return {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter": feature_meta(extractor)["adapter"],
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
    fileio.write_text(out / "results.md", results_markdown(results))
    write_clip_benchmark(out, results)
