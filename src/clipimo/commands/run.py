"""``clipimo run``: the few-shot grid (datasets x shots x seeds x methods), resumable, with tables."""
from __future__ import annotations

import argparse

from .. import _io
from ..options import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SHOTS, IMAGEPCA_DEFAULT, as_list
from .features import add_backbone_args, add_correction_args, add_extractor_args, add_prompt_args, make_extractor


def _templates(value):
    from ..api import prompt_options

    return prompt_options(value, None)[0]


def _classnames(value):
    from ..api import prompt_options

    return prompt_options(None, value)[1]


# option -> (default, parser of a flag/YAML value)
_GRID_OPTIONS = {
    "root": (".", str),
    "datasets": (None, lambda v: as_list(v)),
    "shots": (list(DEFAULT_SHOTS), lambda v: as_list(v, int)),
    "seeds": (list(DEFAULT_SEEDS), lambda v: as_list(v, int)),
    "methods": (list(DEFAULT_METHODS), lambda v: as_list(v)),
    "validation": (None, str),
    "allow_test_tuning": (False, lambda v: as_bool(v, "allow_test_tuning")),
    "augment_passes": (10, int),
    "corrections": (["imo"], lambda v: as_list(v)),
    "textpca_classnames": (None, str),
    "imagepca_images": (None, str),
    "imagepca": (IMAGEPCA_DEFAULT, str),
    "templates": (None, _templates),
    "classnames": (None, _classnames),
    "proker_views": ("auto", str),
    "proker_grid": ("default", str),
    "ape_config": ("default", str),
    "tipf_config": ("default", str),
    "tipf_batch": (256, int),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="few-shot evaluation grid over datasets, shots, seeds and methods")
    p.add_argument("--config", help="YAML file with any of the options below (flags override it)")
    p.add_argument("--root", help="folder holding the benchmark datasets (CoOp layout)")
    p.add_argument("--datasets", help="comma-separated benchmark names, or paths to custom task folders")
    p.add_argument("--shots", help="comma-separated shot counts (default 1,2,4,8,16)")
    p.add_argument("--seeds", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--methods", help="comma-separated: zs,tip,tip-imo,tipx,tipx-imo,gda,gda-imo (default zs,tip,tip-imo,tipx,tipx-imo)")
    p.add_argument("--validation", choices=["full", "kshot", "heldout", "test"],
                   help="hyper-parameter validation set (default: full val split; held-out train images where there is none)")
    p.add_argument("--allow-test-tuning", action="store_const", const=True, help="permit --validation test (recorded in the results)")
    p.add_argument("--augment-passes", help="augmented views averaged per cache key (default 10)")
    p.add_argument("--out", required=True, help="results folder (cells/, results.json/.csv/.md); rerun to resume")
    p.add_argument("--save-features", action="store_true", help="also write each cell's §8 features .npz")
    p.add_argument("--corrections", help="comma-separated corrected streams: imo (the adapter, default), isoclip, "
                                        "textpca, imagepca; the first fills the -imo columns, every one is "
                                        "compared in the report (original features encoded once)")
    p.add_argument("--proker-views", choices=["auto", "all", "mean"], help="proker: every augmented view (all), the averaged keys (mean), or all while E*N <= 32768 (auto, default)")
    p.add_argument("--proker-grid", choices=["default", "official"], help="proker: clipimo's grid (default) or the official per-dataset grid")
    p.add_argument("--ape-config", choices=["default", "official"], help="ape: clipimo's channels/weights/grid (default) or the official per-dataset config")
    p.add_argument("--tipf-config", choices=["default", "official"], help="tip-f: clipimo's training alpha/epochs (default) or the official per-dataset config")
    p.add_argument("--tipf-batch", help="tip-f: minibatch size (default 256; each cell's seed orders the batches)")
    add_correction_args(p, imagepca_default=None)
    add_prompt_args(p)
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=lambda args: run(args, p))


def as_bool(value, name: str) -> bool:
    """A YAML/flag boolean: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0"}:
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def grid_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Defaults, overridden by the YAML config, overridden by explicit flags.

    Backbone/extractor options in the YAML (model, pretrained, adapter, ...) are applied to
    ``args`` where the flag was left at its default.
    """
    values = {k: default for k, (default, _) in _GRID_OPTIONS.items()}
    if args.config:
        loaded = {k.replace("-", "_"): v for k, v in _io.read_yaml_mapping(args.config).items()}
        other = {a.dest for a in parser._actions} - set(_GRID_OPTIONS) - {"help", "config", "out"}
        unknown = set(loaded) - set(_GRID_OPTIONS) - other
        if unknown:
            raise ValueError(f"config file {args.config}: unknown option(s) {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in loaded.items() if k in _GRID_OPTIONS})
        for k in set(loaded) & other:
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, loaded[k])
    values.update({k: getattr(args, k) for k in _GRID_OPTIONS if getattr(args, k) is not None})
    return {k: (None if v is None else _GRID_OPTIONS[k][1](v)) for k, v in values.items()}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..cli import progress_setting
    from ..runner import RunConfig, run_experiment

    cfg = RunConfig(**grid_options(args, parser), skip_unreadable=args.skip_unreadable)
    extractor = make_extractor(args, distributed=True)
    if extractor.env.distributed:  # every rank encodes its share of each cell's shards; rank 0 then evaluates
        from ..distributed import DistEnv
        from ..runner import encode_cells

        try:
            encode_cells(cfg, extractor)
        finally:
            extractor.env.cleanup()
        if not extractor.env.is_main:
            return 0
        extractor.env = DistEnv(device=extractor.env.device)  # rank 0 alone from here; every cell is cached
    results = run_experiment(cfg, extractor, args.out, device=args.device, progress=progress_setting(args),
                             save_features=args.save_features)
    print(f"{len(results['cells'])} cells; tables in {args.out}/results.md, .csv and .json")
    return 0
