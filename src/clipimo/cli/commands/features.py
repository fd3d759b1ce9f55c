"""``clipimo features``: encode images into both feature streams and save them as .npz.

With ``--images`` (a CSV list or an ImageFolder tree) it writes the features of those images; with
``--task`` (a task folder or a benchmark) and ``--shots``/``--seed`` it writes the full features
file of that few-shot cell, which ``clipimo evaluate`` reads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...defaults import CORRECTIONS
from ..config import out_file, path_arg, source_arg
from ..model_args import add_backbone_args, add_correction_args, add_extractor_args, add_prompt_args, make_extractor


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features", help="encode images, or one few-shot cell of a task, into original and corrected features (.npz)",
        description="--images LIST_OR_FOLDER: the features of those images (feats, feats_corrected, labels, meta). "
                    "--task DIR_OR_NAME --shots K --seed S: the full features file of that few-shot cell (support "
                    "cache keys, validation and test features, text weights), which 'clipimo evaluate' reads. An "
                    "--images folder holding train/ and test/ is taken as a task.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=path_arg, help="CSV list (path,label) or ImageFolder tree: writes feats, feats_corrected, labels, "
                                      "logit_scale, logit_bias, meta, and with --passes the per-pass views, views_corrected [E, N, D]")
    src.add_argument("--task", type=source_arg, help="task folder (train/, test/, optional val/: ImageFolder trees or CSVs) or a benchmark name (with --root)")
    p.add_argument("--out", required=True, type=out_file("a features file", ".npz"), help="output .npz")
    p.add_argument("--shots", type=int, default=None, help="with a task: support images per class")
    p.add_argument("--seed", type=int, default=1, help="with a task: few-shot sampling and augmentation seed; "
                                                       "with --images and --passes: augmentation seed")
    p.add_argument("--root", default=".", type=path_arg, help="with a benchmark name: the data root")
    p.add_argument("--validation", choices=["full", "kshot", "heldout", "test"], default=None,
                   help="with a task: hyper-parameter validation set (default: the val split; held-out train images without one)")
    p.add_argument("--allow-test-tuning", action="store_true", help="permit --validation test (recorded in the file)")
    p.add_argument("--augment-passes", type=int, default=10, help="with a task: augmented views averaged per cache key")
    p.add_argument("--passes", type=int, default=0, help="with --images: 0 uses the eval transform; E>0 averages E augmented "
                                                         "views and keeps each")
    p.add_argument("--correction", choices=CORRECTIONS, default="imo",
                   help="with --images, what fills feats_corrected: the IMO adapter (imo) or a training-free "
                        "map of the original features (isoclip, textpca, imagepca)")
    add_correction_args(p)
    add_prompt_args(p)
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...data.custom import is_task_folder

    if args.task or is_task_folder(args.images):
        return run_task(args, args.task or args.images)
    if args.shots is not None:
        raise ValueError(f"--shots applies to a task folder (train/, test/), and {args.images} is not one")
    return run_images(args)


def run_task(args: argparse.Namespace, task: str) -> int:
    from ...api import task_features

    if args.correction != "imo":
        raise ValueError("--correction applies to --images; for task cells use 'clipimo run --corrections'")
    if args.shots is None:
        raise ValueError(f"{task} is a few-shot task: pass --shots K (and --seed S) to choose the cell to encode, "
                         "or point --images at one split of it")
    if not Path(task).expanduser().is_dir():
        from ...data.registry import get_spec

        get_spec(task)  # an unknown benchmark name ("did you mean") before the model loads
    cell = task_features(task, args.shots, args.seed, extractor=make_extractor(args), root=args.root,
                         validation=args.validation, allow_test_tuning=args.allow_test_tuning,
                         augment_passes=args.augment_passes, templates=args.templates, classnames=args.classnames,
                         skip_unreadable=args.skip_unreadable)
    cell.save(args.out)
    f = cell.features
    print(f"wrote {args.out}: {cell.splits.name}, {args.shots} shots, seed {args.seed}: {len(f.cache_labels)} cache "
          f"keys, {len(f.val_labels)} val ({cell.record['protocol']}), {len(f.test_labels)} test, "
          f"{f.num_classes} classes, dim {f.dim}")
    return 0


def run_images(args: argparse.Namespace) -> int:
    import numpy as np

    from ...data.generic import read_csv_list, read_image_folder
    from ...features.corrections import build_correction, fingerprint
    from ...utils import fileio

    if args.templates or args.classnames:
        raise ValueError("--templates and --classnames apply to a task (they shape its text weights)")
    source = Path(args.images)
    if source.is_file() and source.suffix.lower() != ".csv":
        raise ValueError(f"--images {source}: expected an ImageFolder tree (<class>/<images>) or a .csv list "
                         "(path,label), not a single file")
    items, classnames = read_image_folder(source) if source.is_dir() else read_csv_list(source, verify_files=False)
    extractor = make_extractor(args, distributed=True)
    try:
        feats = extractor.image_features(items, passes=args.passes, seed=args.seed, skip_unreadable=args.skip_unreadable)
    finally:
        extractor.env.cleanup()
    if not extractor.env.is_main:  # rank 0 writes the output; the others only encoded their shards
        return 0
    correction = build_correction(args.correction, extractor, args.textpca_classnames, args.imagepca_images,
                                  args.imagepca)
    if correction is not None:
        corrected = correction.apply(feats.original.numpy())
        views_corrected = None if feats.views is None else correction.apply(feats.views.numpy())
    else:
        corrected, views_corrected = feats.corrected, feats.views_corrected
    meta = {
        "backbone": extractor.backbone.identity,
        "random_init": extractor.backbone.random_init,
        "adapter_sha256": extractor.adapter_hash,
        "precision": extractor.precision,
        "source": extractor.source,
        "passes": args.passes,
        "seed": args.seed if args.passes else None,
        "classnames": classnames,
        "paths": feats.paths,
        "skipped": feats.skipped,
        "correction": fingerprint(correction),
    }
    scale, bias = extractor.backbone.logit_scale_bias
    arrays = {"feats": feats.original.numpy(), "labels": feats.labels.numpy(), "meta": np.array(json.dumps(meta)),
              "logit_scale": np.array(scale), "logit_bias": np.array(bias)}
    for key, value in (("feats_corrected", corrected), ("views", feats.views), ("views_corrected", views_corrected)):
        if value is not None:
            arrays[key] = np.asarray(value)
    with fileio.atomic_path(args.out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    print(f"wrote {args.out}: {len(feats.paths)} images, dim {feats.original.shape[1]}, "
          f"streams {f'original+corrected ({args.correction})' if corrected is not None else 'original'}"
          + (f", {len(feats.skipped)} skipped" if feats.skipped else ""))
    return 0
