"""What a stored result depends on: dataset identity, readable unique cell names, cell fingerprints.

A cell of ``clipimo run`` is reused only when its stored fingerprint equals the one computed now,
so changed images, labels, support sets, validation sets, weights, adapters, grids or precision
always recompute it. Add a field here (e.g. a new run option) and every stale cell is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .data.benchmarks import DatasetSplits
from .data.items import LabelledImage


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object (keys sorted), hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def items_digest(items: Iterable[LabelledImage], with_stat: bool = False) -> str:
    """SHA-256 of an item list: absolute path and label of each item; ``with_stat`` adds file size
    and mtime, so an image replaced under the same name changes the digest too."""
    h = hashlib.sha256()
    for path, label in items:
        line = f"{os.path.abspath(path)}\t{int(label)}"
        if with_stat:
            st = os.stat(path) if os.path.isfile(path) else None
            line += f"\t{st.st_size if st else -1}\t{st.st_mtime_ns if st else -1}"
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()


def dataset_identity(splits: DatasetSplits) -> dict[str, Any]:
    """Resolved location, class names, templates and a hash of each split's (path, label) list."""
    return {
        "name": splits.name,
        "location": str(Path(splits.root).resolve()),
        "classnames": digest(splits.classnames),
        "templates": digest(splits.templates),
        **{split: items_digest(splits.split(split)) for split in ("train", "val", "test")},
    }


def dataset_label(splits: DatasetSplits, custom: bool) -> str:
    """A readable name that is unique per dataset: benchmarks keep their name (one data root per
    results folder); custom task folders get a short hash of their resolved location, so two
    folders both called ``task`` never share results."""
    if not custom:
        return splits.name
    return f"{splits.name}-{digest(str(Path(splits.root).resolve()))[:8]}"


def cell_fingerprint(run: Mapping[str, Any], dataset: Mapping[str, Any], shots: int, seed: int,
                     support: Sequence[LabelledImage], val_items: Sequence[LabelledImage],
                     val_record: Mapping[str, Any], test: Sequence[LabelledImage]) -> dict[str, Any]:
    """Everything that determines one (dataset, shots, seed) cell: the run's settings (``run``:
    backbone, adapter, precision, augmentation passes, grids, ...), the dataset identity, and the
    exact support, validation and test images (with file sizes and mtimes)."""
    return {
        "run": dict(run),
        "dataset": dict(dataset),
        "shots": int(shots),
        "seed": int(seed),
        "support": items_digest(support, with_stat=True),
        "validation": {"protocol": val_record.get("protocol"), "split": val_record.get("split"),
                       "tuned_on_test": bool(val_record.get("tuned_on_test")),
                       "items": items_digest(val_items, with_stat=True)},
        "test": items_digest(test, with_stat=True),
    }


_PART_NAMES = {"support": "support set", "validation": "validation set", "test": "test images",
               "dataset": "dataset"}


def fingerprint_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Human-readable names of what differs between two fingerprints (empty when equal)."""
    if not isinstance(old, Mapping):
        return ["no fingerprint stored (written by an older clipimo)"]
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping) and key in ("run", "dataset"):
            changes += [f"{key}.{k}" if key == "dataset" else k
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            changes.append(_PART_NAMES.get(key, key))
    return changes
