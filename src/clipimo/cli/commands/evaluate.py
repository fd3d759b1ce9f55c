"""``clipimo evaluate``: run training-free methods on a features file and write the results JSON."""
from __future__ import annotations

import argparse

from ...defaults import DEFAULT_METHODS
from ...methods.names import METHOD_NAMES
from ..args import add_device_arg, add_json_arg, add_method_option_args
from ..config import add_list_argument, out_file, path_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate training-free methods on a features .npz",
        description="Search each method's hyper-parameters on val and report val/test top-1 (%). "
                    f"Methods: {', '.join(METHOD_NAMES)}.")
    p.add_argument("--features", required=True, metavar="FILE", type=path_arg,
                   help="features .npz of one few-shot cell ('clipimo features --task' or 'clipimo run --save-features')")
    add_list_argument(p, "--methods", choices=METHOD_NAMES, default=DEFAULT_METHODS, metavar="NAME",
                      help="methods to evaluate (repeatable, comma-separated; 'all' for every one)")
    add_json_arg(p, "{method: {test_acc, val_acc, hparams, test_top5, test_mean_per_class_recall}}")
    add_device_arg(p, "where the search runs")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--seed", type=int, default=1, help="tip-f, zs-lp, clap: seed of the minibatch order; lp++: of "
                   "its bias draw; tda: of the test stream order")
    add_method_option_args(p, "--seed orders them")
    p.add_argument("--save-classifier", metavar="FILE", default=None, type=out_file("a classifier", ".safetensors"),
                   help="save the tuned classifier (.safetensors) for 'clipimo predict': the method evaluated, or "
                        "of several the one with the best val top-1")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ...features.file import read_meta, read_npz, validate_features
    from ...methods.common import MethodOptions
    from ...methods.evaluate import method_settings, results_table, run_methods
    from ...utils.log import logger, warn_random_init
    from ..output import progress_setting, write_json_output

    arrays = read_npz(args.features)
    meta = read_meta(arrays, args.features)
    if meta.get("random_init"):
        warn_random_init()
    if (meta.get("validation") or {}).get("tuned_on_test"):
        logger.warning("this file's val_* features are the TEST split: the accuracies below are tuned on test")
    feats = validate_features(arrays, str(args.features))
    correction = (meta.get("correction") or {}).get("name")
    if correction:
        logger.info(f"corrected stream of the -imo methods: {correction}")
    options = MethodOptions(seed=args.seed, tipf_batch=args.tipf_batch, proker_views=args.proker_views,
                            proker_grid=args.proker_grid, ape_config=args.ape_config, tipf_config=args.tipf_config,
                            clap_batch=args.clap_batch, tda_config=args.tda_config, dataset=meta.get("dataset"))
    ran = run_methods(feats, args.methods, device=args.device, progress=progress_setting(args), options=options)
    results = {name: r.as_dict() for name, r in ran.items()}
    print(results_table(results, markdown=args.markdown, settings=method_settings(ran)), flush=True)  # shown even if --json fails
    if args.json:
        write_json_output(args.json, results)
    if args.save_classifier:
        from ...methods.classifier import Classifier, best_method

        method = best_method(results)
        provenance = {"features": str(args.features), **{k: meta[k] for k in ("dataset", "shots", "seed") if k in meta},
                      "templates": meta.get("templates"), **results[method]}
        from ...features.corrections import saved_map

        correction = saved_map(arrays, meta.get("correction"), str(args.features)) if method.endswith("-imo") else None
        Classifier.from_features(feats, method, results[method]["hparams"], meta, provenance, options=options,
                                 settings=ran[method].meta, correction=correction,
                                 device=args.device).save(args.save_classifier)
        logger.info(f"wrote {args.save_classifier}: {method} classifier ({feats.num_classes} classes)")
    return 0

