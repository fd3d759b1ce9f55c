"""``clipimo run``: the few-shot grid (datasets x shots x seeds x methods), resumable, with tables.

Its effective settings are saved as ``<out>/config.yaml`` (paths absolute): ``clipimo run --config
<out>/config.yaml`` continues the run from any folder.
"""
from __future__ import annotations

import argparse

from ...defaults import CORRECTIONS, DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_SHOTS
from ...methods.names import METHOD_NAMES
from ..args import add_dataset_arg, add_method_option_args
from ..config import add_list_argument, out_folder, path_arg
from ..model_args import add_backbone_args, add_correction_args, add_extractor_args, add_prompt_args, make_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="few-shot evaluation grid over datasets, shots, seeds and methods",
                       description="Every cell (dataset, shots, seed) is cached in OUT/cells; rerun the same command, "
                                   "or 'clipimo run --config OUT/config.yaml', to resume.")
    p.add_argument("--root", default=".", type=path_arg, help="folder holding the benchmark datasets (CoOp layout)")
    add_dataset_arg(p, "benchmark names or custom task folders (repeatable, comma-separated)", required=True)
    add_list_argument(p, "--shots", item=int, default=DEFAULT_SHOTS, metavar="K", help="shot counts")
    add_list_argument(p, "--seeds", item=int, default=DEFAULT_SEEDS, metavar="S", help="few-shot sampling seeds")
    add_list_argument(p, "--methods", choices=METHOD_NAMES, default=DEFAULT_METHODS, metavar="NAME",
                      help=f"methods, from {','.join(METHOD_NAMES)}, or all")
    p.add_argument("--validation", choices=["full", "kshot", "heldout", "test"],
                   help="hyper-parameter validation set (default: full val split; held-out train images where there is none)")
    p.add_argument("--allow-test-tuning", action="store_true", help="permit --validation test (recorded in the results)")
    p.add_argument("--augment-passes", type=int, default=10, help="augmented views averaged per cache key")
    p.add_argument("--out", required=True, type=out_folder("a clipimo run"),
                   help="results folder (cells/, results.json/.csv/.md, config.yaml); rerun to resume")
    p.add_argument("--save-features", action="store_true", help="also write each cell's features .npz")
    add_list_argument(p, "--corrections", choices=CORRECTIONS, default=["imo"], metavar="NAME",
                      help="corrected streams, from imo (the adapter), isoclip, textpca, imagepca; the first fills "
                           "the -imo columns, every one is compared in the report (original features encoded once)")
    add_method_option_args(p, "each cell's seed orders them")
    add_correction_args(p)
    add_prompt_args(p)
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...api import prompt_options
    from ...experiment.grid import RunConfig, open_sources, run_experiment
    from ...methods.names import require_adapter
    from ...utils.device import resolve_device
    from ..config import config_yaml, effective_config
    from ..output import progress_setting

    templates, classnames = prompt_options(args.templates, args.classnames)
    cfg = RunConfig(root=args.root, datasets=args.dataset, shots=args.shots, seeds=args.seeds, methods=args.methods,
                    validation=args.validation, allow_test_tuning=args.allow_test_tuning,
                    augment_passes=args.augment_passes, skip_unreadable=args.skip_unreadable,
                    corrections=args.corrections, textpca_classnames=args.textpca_classnames,
                    imagepca_images=args.imagepca_images, imagepca=args.imagepca, templates=templates,
                    classnames=classnames, proker_views=args.proker_views, proker_grid=args.proker_grid,
                    ape_config=args.ape_config, tipf_config=args.tipf_config, tipf_batch=args.tipf_batch,
                    clap_batch=args.clap_batch, tda_config=args.tda_config)
    resolve_device(args.device)  # the cheap checks, before the model loads: the device, the adapter, the data
    if "imo" in cfg.corrections:
        require_adapter(cfg.methods, args.adapter is not None)
    datasets = open_sources(cfg)
    extractor = make_extractor(args, distributed=True)
    if extractor.env.distributed:  # every rank encodes its share of each cell's shards; rank 0 then evaluates
        from ...experiment.grid import encode_cells

        try:
            encode_cells(cfg, extractor)
        finally:
            extractor.env.cleanup()  # rank 0 alone from here; every cell is cached
        if not extractor.env.is_main:
            return 0
    results = run_experiment(cfg, extractor, args.out, device=args.device, progress=progress_setting(args),
                             save_features=args.save_features, settings_yaml=config_yaml(effective_config(args)),
                             datasets=datasets)
    from ...report.tables import accuracy_tables
    from ...utils.log import logger

    logger.info(f"{len(results['cells'])} cells; tables in {args.out}/results.md, .csv and .json")
    print("\n".join(accuracy_tables(results)).rstrip())  # the summary, as results on stdout
    return 0
