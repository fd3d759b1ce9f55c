"""Overlap diagnostics of one image set, original vs corrected stream: where its features come from
(a features file, or a backbone applied to a dataset split or an image folder/CSV), how many pairs
are measured, and the record that ``overlap.json`` stores (:mod:`clipimo.report.overlap_file`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..defaults import DEFAULT_AUTO_SAMPLE, DEFAULT_MAX_EXACT_PAIRS
from ..errors import ClipimoError
from ..utils.log import logger

if TYPE_CHECKING:
    from ..features.extractor import FeatureExtractor

# features file of a few-shot cell: split -> (features key, corrected key, labels key)
CELL_SPLIT_KEYS = {
    "test": ("test_feats", "test_feats_corrected", "test_labels"),
    "val": ("val_feats", "val_feats_corrected", "val_labels"),
    "cache": ("cache_keys", "cache_keys_corrected", "cache_labels"),
}


def load_feature_source(path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Features, optional corrected features, labels and provenance from a features ``.npz``.

    Accepts the ``clipimo features --images`` output (keys ``feats``, ``labels``, optional
    ``feats_corrected``, ``meta``) and a few-shot cell's features file (``split`` from
    test|val|cache). Loaded without pickle.
    """
    from ..features.file import read_meta, read_npz

    path = Path(path)
    arrays = read_npz(path)
    keys = set(arrays)
    meta = read_meta(arrays, path)
    if "feats" in keys:
        if split not in (None, "test"):
            logger.info(f"note: {path} is a 'clipimo features --images' file with a single image set; "
                        f"--split {split} ignored")
        fkey, ckey, lkey = "feats", "feats_corrected", "labels"
        kind, described = "features", f"{path.name}"
    elif keys & {k for triple in CELL_SPLIT_KEYS.values() for k in triple} or "text_weights" in keys:
        split = split or "test"
        if split not in CELL_SPLIT_KEYS:
            raise ClipimoError(f"features file {path}: split {split!r} does not exist in a few-shot cell's features "
                               f"file; use one of {', '.join(CELL_SPLIT_KEYS)}")
        fkey, ckey, lkey = CELL_SPLIT_KEYS[split]
        kind, described = "features-section8", f"{path.name} [{split}]"
    else:
        raise ClipimoError(
            f"features file {path}: missing key 'feats' (a 'clipimo features --images' file) or 'test_feats'/"
            f"'val_feats'/'cache_keys' (a 'clipimo features --task' file); found keys: {', '.join(sorted(keys)) or 'none'}")
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


def encode_source(extractor: FeatureExtractor, dataset: str | None = None, root: str | Path = ".",
                  split: str | None = None, images: str | Path | None = None, adapter: str | None = None,
                  skip_unreadable: bool = False) -> dict[str, Any]:
    """Both streams of a dataset split (``dataset``: a benchmark name or task folder, under ``root``)
    or of an image folder/CSV (``images``), encoded by ``extractor``; ``adapter`` names its adapter."""
    from ..data import open_dataset
    from ..data.generic import read_csv_list, read_image_folder

    if dataset:
        split = split or "test"
        if split == "cache":
            raise ClipimoError("--split cache applies to a few-shot cell's features file; for a dataset use test, "
                               "val or train")
        ds = open_dataset(dataset, root)
        items = ds.split(split)
        if not items:
            raise ClipimoError(f"{ds.name}: the {split} split is empty")
        source = {"kind": "dataset", "dataset": ds.name, "root": str(root), "split": split,
                  "description": f"{ds.name} {split}"}
    elif images:
        if split is not None:
            logger.info(f"note: --split {split} ignored with --images")
        path = Path(images)
        items, _ = read_image_folder(path) if path.is_dir() else read_csv_list(path, verify_files=False)
        source = {"kind": "images", "path": str(path), "description": path.name or str(path)}
    else:
        raise ClipimoError("give a dataset or an image folder/CSV to encode")
    feats = extractor.image_features(items, skip_unreadable=skip_unreadable, desc=source["description"])
    if feats.skipped:
        source["skipped"] = len(feats.skipped)
    return {
        "original": feats.original.numpy(),
        "corrected": None if feats.corrected is None else feats.corrected.numpy(),
        "labels": feats.labels.numpy(),
        "source": source,
        "backbone": extractor.backbone.identity,
        "adapter": {"path": str(adapter), "sha256": extractor.adapter_hash} if adapter else None,
        "random_init": extractor.backbone.random_init,
    }


def sample_size(n: int, sample_pairs: int | None = None, exact: bool = False,
                max_exact_pairs: int = DEFAULT_MAX_EXACT_PAIRS, seed: int = 0) -> int | None:
    """How many pairs of ``n`` images to sample (None: every pair i < j)."""
    total = n * (n - 1) // 2
    if sample_pairs is not None:
        if exact:
            raise ClipimoError("--sample-pairs and --exact contradict each other")
        if sample_pairs < 1:
            raise ClipimoError(f"--sample-pairs must be >= 1, got {sample_pairs}")
        return sample_pairs
    if not exact and total > max_exact_pairs:
        logger.info(f"note: {total:,} pairs exceed --max-exact-pairs {max_exact_pairs:,}: sampling "
                    f"{DEFAULT_AUTO_SAMPLE:,} pairs (seed {seed}); pass --exact for every pair")
        return DEFAULT_AUTO_SAMPLE
    return None


MAX_BINS = 10_000  # bins 2e-4 wide: finer than any density estimate needs, and a bounded record


def check_bins(value: str | int) -> int | None:
    """``--bins``: an integer in 1..MAX_BINS, or 'auto' (None); checked before anything is encoded."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        bins = int(value)
    except ValueError:
        bins = 0
    if not 1 <= bins <= MAX_BINS:
        raise ClipimoError(f"--bins must be an integer from 1 to {MAX_BINS} or 'auto', got {value!r}")
    return bins


def parse_bins(value: str | int) -> int | str:
    """``--bins`` as :func:`clipimo.overlap.stats.compare_streams` takes it: :func:`check_bins`'s
    integer, or 'auto' (the bins are then chosen from the data's range and pair counts)."""
    bins = check_bins(value)
    return "auto" if bins is None else bins


def measure_overlap(src: dict[str, Any], bins: str | int = "auto", sample_pairs: int | None = None,
                    exact: bool = False, max_exact_pairs: int = DEFAULT_MAX_EXACT_PAIRS,
                    seed: int = 0) -> dict[str, Any]:
    """The ``overlap.json`` record of a source from :func:`load_feature_source` or :func:`encode_source`."""
    from ..report.figures import few_pairs_warning
    from ..report.overlap_file import overlap_file_record
    from .stats import compare_streams

    labels = np.asarray(src["labels"])
    n = len(labels)
    what = src["source"]["description"]
    if n < 2:
        raise ClipimoError(f"{what}: need at least 2 images, got {n}")
    counts = np.unique(labels, return_counts=True)[1]
    if len(counts) < 2:
        raise ClipimoError(f"{what}: all {n} images have one label; unpaired (different-class) similarities "
                           "need at least 2 classes")
    if counts.max() < 2:
        raise ClipimoError(f"{what}: every class has a single image; paired (same-class) similarities need a "
                           "class with at least 2 images")
    sample = sample_size(n, sample_pairs, exact, max_exact_pairs, seed)
    figures = compare_streams(src["original"], src["corrected"], labels, bins=parse_bins(bins),
                              sample_pairs=sample, seed=seed)
    warning = few_pairs_warning(figures)
    if warning:
        logger.warning("%s: %s", what, warning)
    return overlap_file_record(src, figures, n_classes=int(len(counts)))


def overlap_text(record: dict[str, Any]) -> str:
    """The figures of an overlap record as a small fixed-width text table."""
    header = f"{'stream':<10} {'overlap':>8} {'bhattach.':>9} {'variance':>10} {'paired':>12} {'unpaired':>12}"
    lines = [header, "-" * len(header)]

    def f(v: float | None, spec: str) -> str:
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
    b = record["bins"]
    lines.append(f"bins: {b['count']} over [{b['low']:.3f}, {b['high']:.3f}] ({b.get('rule', 'fixed')})")
    return "\n".join(lines)
