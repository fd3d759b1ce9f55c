"""``clipimo overlap``: intra-modal overlap, Bhattacharyya coefficient and feature variance,
original vs corrected, of a dataset split, an image folder/CSV, or a saved features file.

Writes ``OUT/overlap.json`` (every figure, the densities and where they came from) and
``OUT/overlap.png`` (the histograms), and prints the figures as a small table.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ClipimoError
from ..log import logger, warn_random_init
from ..options import DEFAULT_BINS
from .features import add_backbone_args, add_extractor_args, make_extractor

DEFAULT_MAX_EXACT_PAIRS = 250_000_000   # ~22k images; beyond that sample unless --exact
DEFAULT_AUTO_SAMPLE = 20_000_000
# §8 features file: split -> (features key, corrected key, labels key)
SECTION8_KEYS = {
    "test": ("test_feats", "test_feats_corrected", "test_labels"),
    "val": ("val_feats", "val_feats_corrected", "val_labels"),
    "cache": ("cache_keys", "cache_keys_corrected", "cache_labels"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overlap",
        help="paired/unpaired image-similarity overlap, Bhattacharyya coefficient and feature variance",
        description="Intra-modal overlap diagnostics (METHOD.md §7), original vs corrected stream. Source: "
                    "--features FILE (a 'clipimo features' .npz or a §8 features .npz), or a backbone "
                    "(--model/--pretrained, with --adapter for the corrected stream) applied to "
                    "--dataset NAME --root DIR or to --images DIR_OR_CSV.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="features .npz: 'clipimo features' output or a §8 features file")
    src.add_argument("--dataset", help="benchmark name (with --root), e.g. Caltech101, or a custom task folder")
    src.add_argument("--images", help="ImageFolder tree or CSV list (path,label)")
    p.add_argument("--root", help="data root holding the benchmark folders (with --dataset)")
    p.add_argument("--split", choices=["test", "val", "train", "cache"], default=None,
                   help="dataset split (test|val|train, default test) or §8 features split "
                        "(test|val|cache, default test)")
    p.add_argument("--out", required=True, help="output folder for overlap.json and overlap.png")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS,
                   help=f"histogram bins over [-1, 1] (default {DEFAULT_BINS})")
    p.add_argument("--sample-pairs", type=int, default=None,
                   help="estimate from this many uniformly drawn pairs instead of all pairs")
    p.add_argument("--max-exact-pairs", type=int, default=DEFAULT_MAX_EXACT_PAIRS,
                   help=f"above this many pairs, sample {DEFAULT_AUTO_SAMPLE:,} pairs unless --exact "
                        f"(default {DEFAULT_MAX_EXACT_PAIRS:,})")
    p.add_argument("--exact", action="store_true", help="always use every pair (memory-safe, may be slow)")
    p.add_argument("--seed", type=int, default=0, help="pair-sampling seed (default 0)")
    p.add_argument("--title", default=None, help="figure title")
    add_backbone_args(p)
    add_extractor_args(p)
    p.set_defaults(func=run)


# ---- sources -------------------------------------------------------------------------------------

def load_feature_source(path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Features, optional corrected features, labels and provenance from a features ``.npz``.

    Accepts the ``clipimo features`` output (keys ``feats``, ``labels``, optional ``feats_corrected``,
    ``meta``) and the §8 features file (``<split>`` from test|val|cache). Loaded without pickle.
    """
    from ..featurefile import read_meta, read_npz

    path = Path(path)
    arrays = read_npz(path)
    keys = set(arrays)
    meta = read_meta(arrays)
    if "feats" in keys:
        if split not in (None, "test"):
            logger.info(f"note: {path} is a 'clipimo features' file with a single image set; --split {split} ignored")
        fkey, ckey, lkey = "feats", "feats_corrected", "labels"
        kind, described = "features", f"{path.name}"
    elif keys & {k for triple in SECTION8_KEYS.values() for k in triple} or "text_weights" in keys:
        split = split or "test"
        if split not in SECTION8_KEYS:
            raise ClipimoError(f"features file {path}: split {split!r} does not exist in a §8 features file; "
                               f"use one of {', '.join(SECTION8_KEYS)}")
        fkey, ckey, lkey = SECTION8_KEYS[split]
        kind, described = "features-section8", f"{path.name} [{split}]"
    else:
        raise ClipimoError(
            f"features file {path}: missing key 'feats' (a 'clipimo features' file) or 'test_feats'/'val_feats'/"
            f"'cache_keys' (a §8 features file); found keys: {', '.join(sorted(keys)) or 'none'}")
    for key in (fkey, lkey):
        if key not in keys:
            raise ClipimoError(f"features file {path}: missing key {key!r}")
    feats, labels = arrays[fkey], arrays[lkey]
    corrected = arrays.get(ckey)
    if feats.ndim != 2:
        raise ClipimoError(f"features file {path}: key {fkey!r} must be a 2-D [N, D] array, got shape {feats.shape}")
    if labels.ndim != 1 or len(labels) != len(feats):
        raise ClipimoError(f"features file {path}: key {lkey!r} must hold one label per row of {fkey!r} "
                           f"({len(feats)}), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ClipimoError(f"features file {path}: key {lkey!r} must be integer labels, got dtype {labels.dtype}")
    if corrected is not None and corrected.shape != feats.shape:
        raise ClipimoError(f"features file {path}: key {ckey!r} has shape {corrected.shape}, "
                           f"{fkey!r} has {feats.shape}: they must match")
    if corrected is None:
        logger.info(f"note: {path} has no {ckey!r}: original stream only")
    random_init = meta.get("random_init")
    if random_init is None and isinstance(meta.get("backbone"), dict):
        random_init = meta["backbone"].get("random_init")
    return {
        "original": feats, "corrected": corrected, "labels": labels,
        "source": {"kind": kind, "path": str(path), "split": split if kind != "features" else None,
                   "keys": [fkey, ckey if corrected is not None else None, lkey], "description": described},
        "backbone": meta.get("backbone"),
        "adapter": {"sha256": meta["adapter_sha256"]} if meta.get("adapter_sha256") else None,
        "random_init": None if random_init is None else bool(random_init),
    }


def _model_source(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import open_dataset
    from ..data.generic import read_csv_list, read_image_folder

    if args.dataset:
        split = args.split or "test"
        if split == "cache":
            raise ClipimoError("--split cache applies to a §8 features file; for a dataset use test, val or train")
        ds = open_dataset(args.dataset, args.root or ".")
        items = ds.split(split)
        if not items:
            raise ClipimoError(f"{ds.name}: the {split} split is empty")
        source = {"kind": "dataset", "dataset": ds.name, "root": str(args.root or "."), "split": split,
                  "description": f"{ds.name} {split}"}
    else:
        if args.split is not None:
            logger.info(f"note: --split {args.split} ignored with --images")
        path = Path(args.images)
        items, _ = read_image_folder(path) if path.is_dir() else read_csv_list(path, verify_files=False)
        source = {"kind": "images", "path": str(path), "description": path.name or str(path)}
    extractor = make_extractor(args)
    feats = extractor.image_features(items, skip_unreadable=args.skip_unreadable,
                                     desc=source["description"])
    if feats.skipped:
        source["skipped"] = len(feats.skipped)
    return {
        "original": feats.original.numpy(),
        "corrected": None if feats.corrected is None else feats.corrected.numpy(),
        "labels": feats.labels.numpy(),
        "source": source,
        "backbone": extractor.backbone.identity,
        "adapter": {"path": str(args.adapter), "sha256": extractor.adapter_hash} if args.adapter else None,
        "random_init": extractor.backbone.random_init,
    }


# ---- run -----------------------------------------------------------------------------------------

def _sample_size(args: argparse.Namespace, n: int) -> int | None:
    total = n * (n - 1) // 2
    if args.sample_pairs is not None:
        if args.exact:
            raise ClipimoError("--sample-pairs and --exact contradict each other")
        if args.sample_pairs < 1:
            raise ClipimoError(f"--sample-pairs must be >= 1, got {args.sample_pairs}")
        return args.sample_pairs
    if not args.exact and total > args.max_exact_pairs:
        logger.info(f"note: {total:,} pairs exceed --max-exact-pairs {args.max_exact_pairs:,}: sampling "
                    f"{DEFAULT_AUTO_SAMPLE:,} pairs (seed {args.seed}); pass --exact for every pair")
        return DEFAULT_AUTO_SAMPLE
    return None


def format_table(record: dict[str, Any]) -> str:
    """The figures of an overlap record as a small fixed-width text table."""
    header = f"{'stream':<10} {'overlap':>8} {'bhattach.':>9} {'variance':>10} {'paired':>12} {'unpaired':>12}"
    lines = [header, "-" * len(header)]

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for name in ("original", "corrected"):
        s = record.get(name)
        if s:
            lines.append(f"{name:<10} {f(s['overlap'], '8.4f'):>8} {f(s['bhattacharyya'], '9.4f'):>9} "
                         f"{f(s['variance'], '10.4g'):>10} {s['n_pairs']['paired']:>12,} {s['n_pairs']['unpaired']:>12,}")
    d = record.get("delta")
    if d:
        lines.append(f"{'change':<10} {f(d['overlap'], '+8.4f'):>8} {f(d['bhattacharyya'], '+9.4f'):>9} "
                     f"{f(d['variance'], '+10.3g'):>10}")
    s = record["original"]
    if s["mode"] == "sampled":
        lines.append(f"pairs: sampled {s['sample_size']:,} of {s['total_pairs']:,} (seed {s['seed']}), "
                     "the same pairs for both streams")
    else:
        lines.append(f"pairs: exact, all {s['total_pairs']:,} pairs i<j of {s['n_items']:,} images")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import diagnostics
    from ..report import overlap_file_record, write_overlap

    if args.features:
        for flag, value in (("--root", args.root), ("--adapter", args.adapter), ("--pretrained", args.pretrained)):
            if value is not None:
                logger.info(f"note: {flag} ignored with --features")
        src = load_feature_source(args.features, args.split)
    else:
        src = _model_source(args)
    labels = np.asarray(src["labels"])
    n = len(labels)
    if n < 2:
        raise ClipimoError(f"{src['source']['description']}: need at least 2 images, got {n}")
    counts = np.unique(labels, return_counts=True)[1]
    if len(counts) < 2:
        raise ClipimoError(f"{src['source']['description']}: all {n} images have one label; unpaired "
                           "(different-class) similarities need at least 2 classes")
    if counts.max() < 2:
        raise ClipimoError(f"{src['source']['description']}: every class has a single image; paired "
                           "(same-class) similarities need a class with at least 2 images")
    if args.bins < 1:
        raise ClipimoError(f"--bins must be >= 1, got {args.bins}")
    sample = _sample_size(args, n)
    figures = diagnostics.compare_streams(src["original"], src["corrected"], labels, bins=args.bins,
                                          sample_pairs=sample, seed=args.seed)
    record = overlap_file_record(src, figures, n_classes=int(len(counts)))
    out = Path(args.out)
    write_overlap(record, out, title=args.title)
    if record["random_init"]:
        warn_random_init()
    elif record["random_init"] is None:
        logger.info("note: the features file does not record whether its backbone was pretrained")
    print(f"{src['source']['description']}: {n:,} images, {len(counts)} classes, dim {record['dim']}")
    print(format_table(record))
    print(f"wrote {out / 'overlap.json'} and {out / 'overlap.png'}")
    return 0
