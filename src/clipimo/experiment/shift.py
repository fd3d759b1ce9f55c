"""Distribution shift: an ImageNet few-shot cache and its tuned hyper-parameters, applied unchanged
to ImageNet-V2, -Sketch, -A and -R (logits restricted to the target's classes, 200 for -A and -R).

TDA has no ImageNet state to carry over: it adapts on the stream it classifies, so on each target
it runs on that target's own test stream, its zero-shot classifier restricted to the target's
classes first (its pseudo-labels, and so its caches, are then classes the target has)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..data import SHIFT_SETS, DatasetSplits, load_dataset
from ..errors import ClipimoError
from ..features.extractor import FeatureExtractor
from ..methods import official, tda
from ..methods.common import MethodOptions, MethodResult, Problem, Split
from ..methods.evaluate import evaluate_features
from ..methods.names import base_method, is_imo, require_adapter
from ..methods.predict import fixed_point
from ..report.aggregate import STD_LABEL, mean_std
from ..utils import fileio
from ..utils.device import full_float32, resolve_device
from ..utils.lock import folder_lock
from ..utils.log import RANDOM_INIT_WARNING, Progress, tqdm_disable, warn_random_init
from ..utils.markdown import md_table
from ..utils.outputs import refuse_foreign_files
from ..version import __version__
from .cell import OpenedDataset, cell_features, feature_meta, open_source, plan_cell
from .grid import RunConfig

SOURCE = "ImageNet"
SHIFT_FORMAT = "clipimo-shift"  # shift.json's marker: how its folder is known


def is_shift_folder(folder: Path) -> bool:
    """Whether ``folder``'s shift.json was written by ``clipimo shift`` (its format, or the per-seed rows
    and config of records written before the format existed)."""
    try:
        record = fileio.read_json(folder / "shift.json", "shift record")
    except ClipimoError:
        return False
    return record.get("format") == SHIFT_FORMAT or {"per_seed", "config", "rows"} <= set(record)


def open_shift(cfg: RunConfig, targets: Sequence[str] = SHIFT_SETS) -> tuple[OpenedDataset, list[DatasetSplits]]:
    """The source and the target sets, opened and checked (one shot count; each set's class count;
    the methods' configurations on the source, and TDA's on each target): what can fail cheaply,
    done before a model loads."""
    if len(cfg.shots) != 1:
        raise ClipimoError(f"shift uses one shot count (the paper: 16), got {cfg.shots}")
    source, shifted = open_source(SOURCE, cfg.root), [load_dataset(t, cfg.root) for t in targets]
    official.check_configs(cfg.method_options(1, source.splits.name), cfg.methods)
    for target in shifted:
        official.check_configs(cfg.method_options(1, target.name), [m for m in cfg.methods if _streaming(m)])
    return source, shifted


def run_shift(cfg: RunConfig, extractor: FeatureExtractor, out: str | Path, targets: Sequence[str] = SHIFT_SETS,
              device: str = "cpu", progress: bool | None = None,
              opened: tuple[OpenedDataset, list[DatasetSplits]] | None = None) -> dict[str, Any]:
    """Tune every method on the ImageNet cell of each seed in ``cfg`` (one shot count), score the targets.

    Writes ``out/shift.json`` (per-seed and mean rows) and ``out/shift.md``; returns the record.
    ``opened``: :func:`open_shift`'s datasets, when the caller opened them before loading the model.
    """
    source, shifted = opened or open_shift(cfg, targets)
    require_adapter(cfg.methods, extractor.adapter_hash is not None)
    out, dev = Path(out).expanduser(), resolve_device(device)
    refuse_foreign_files(out, ["shift.json", "shift.md"], is_shift_folder, "clipimo shift")
    with folder_lock(out):
        return _run_locked(cfg, extractor, out, source, shifted, dev, progress)


def _run_locked(cfg: RunConfig, extractor: FeatureExtractor, out: Path, source: OpenedDataset,
                shifted: list[DatasetSplits], dev, progress: bool | None) -> dict[str, Any]:
    if extractor.backbone.random_init:
        warn_random_init()
    per_seed: list[dict[str, Any]] = []
    records = []
    steps = Progress("shift", len(cfg.seeds) * (1 + len(shifted)))
    for seed in tqdm(cfg.seeds, desc="seeds", disable=tqdm_disable(progress)):
        feats, record = cell_features(extractor, plan_cell(source, cfg.shots[0], seed, cfg.cell, {}), cfg.cell, out / "supports")
        records.append(record)
        options = cfg.method_options(seed, source.splits.name)  # the cell's seed orders Tip-F's batches
        tuned = evaluate_features(feats, cfg.methods, device=dev, options=options)
        problem = Problem.from_features(feats, dev)
        per_seed += [{"target": SOURCE, "seed": seed, "method": m, "test_acc": r["test_acc"], "hparams": r["hparams"]}
                     for m, r in tuned.items()]
        steps.update(f"seed {seed}: {len(tuned)} method(s) tuned on {SOURCE} {cfg.shots[0]}-shot")
        with full_float32():  # as the search ran (Tip-F retrains its keys here)
            fixed = {m: fixed_point(problem, m, r["hparams"], options=options) for m, r in tuned.items()
                     if not _streaming(m)}
            for target in shifted:
                tf = extractor.image_features(target.test, skip_unreadable=cfg.skip_unreadable,
                                              desc=f"{target.name} test")
                split = Split(tf.original.to(dev), tf.corrected_or_original.to(dev), tf.labels.to(dev))
                for m, r in tuned.items():
                    row = {"target": target.name, "seed": seed, "method": m, "hparams": r["hparams"]}
                    if _streaming(m):  # its own run on the target: its configuration and caches recorded
                        adapted = _adapt_on(problem, split, target.imagenet_classes, m,
                                            cfg.method_options(seed, target.name))
                        row.update(test_acc=adapted.test_acc, settings=adapted.meta)
                    else:
                        row["test_acc"] = fixed[m].accuracy(split, target.imagenet_classes)
                    per_seed.append(row)
                steps.update(f"seed {seed}: {target.name} scored ({len(tf.labels)} test images)")
    rows = []
    for target in [SOURCE] + [t.name for t in shifted]:
        for m in cfg.methods:
            accs = [r["test_acc"] for r in per_seed if r["target"] == target and r["method"] == m]
            mean, std = mean_std(accs)
            rows.append({"target": target, "method": m, "test_acc": mean, "std": std, "n": len(accs)})
    result = {
        "format": SHIFT_FORMAT,
        "source": SOURCE,
        "shots": cfg.shots[0],
        "seeds": cfg.seeds,
        "rows": rows,
        "per_seed": per_seed,
        "validation": records,
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter": feature_meta(extractor)["adapter"],
        "model_source": extractor.source,  # how to rebuild the model ("source" is the tuned dataset)
        "config": dataclasses.asdict(cfg),
        "clipimo_version": __version__,
    }
    fileio.write_json(out / "shift.json", result)
    fileio.write_text(out / "shift.md", shift_markdown(result))
    return result


def _streaming(method: str) -> bool:
    return base_method(method) == "tda"


def _adapt_on(problem: Problem, split: Split, classes: Sequence[int] | None, method: str,
              options: MethodOptions) -> MethodResult:
    """TDA on the target's own test stream, with the text weights of its classes (``split.labels``
    index into ``classes``). TDA reads only the text weights and the test split."""
    if classes is not None:
        keep = torch.as_tensor(list(classes), device=problem.text_weights.device)
        norms = None if problem.text_norms is None else problem.text_norms[keep]
        problem = dataclasses.replace(problem, text_weights=problem.text_weights[:, keep], text_norms=norms)
    target = dataclasses.replace(problem, val=split, test=split)
    return tda.run(target, is_imo(method), options)


def shift_markdown(result: dict[str, Any]) -> str:
    """Methods x targets table, mean ± std over seeds."""
    targets = list(dict.fromkeys(r["target"] for r in result["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    index = {(r["target"], r["method"]): r for r in result["rows"]}
    lines = ["# Distribution shift", ""]
    if result["random_init"]:
        lines += [f"> **{RANDOM_INIT_WARNING}**", ""]
    lines += [f"{result['source']} {result['shots']}-shot cache and hyper-parameters applied unchanged; "
              f"top-1 test accuracy (%), mean ± {STD_LABEL} over n = {len(result['seeds'])} seeds "
              f"({', '.join(map(str, result['seeds']))})."]
    if any(_streaming(m) for m in methods):
        lines += ["TDA adapts on each target's own test stream (its zero-shot classifier restricted to the target's "
                  "classes); it carries nothing over from ImageNet."]
    lines += [""]
    table = [[m] + [f"{index[(t, m)]['test_acc']:.2f} ± {index[(t, m)]['std']:.2f}" for t in targets] for m in methods]
    lines += [md_table(["method"] + targets, table), ""]
    return "\n".join(lines)


