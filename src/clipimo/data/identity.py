"""What identifies a dataset and an image list: digests of class names, templates and (path, label)
lists, and the readable unique name a dataset gets in results."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..utils import fileio
from .benchmarks import DatasetSplits
from .items import LabelledImage


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object (keys sorted), hex."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def items_digest(items: Iterable[LabelledImage], with_stat: bool = False) -> str:
    """SHA-256 of an item list: absolute path and label of each item; ``with_stat`` adds each file's
    stamp (size, mtime, ctime, inode: :func:`clipimo.utils.fileio.file_stamp`), so an image replaced
    under the same name changes the digest too, even with its size and mtime restored."""
    h = hashlib.sha256()
    for path, label in items:
        line = f"{os.path.abspath(path)}\t{int(label)}"
        if with_stat:
            line += f"\t{fileio.file_stamp(path)}"
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


def dataset_label(splits: DatasetSplits, disambiguate: bool = False) -> str:
    """The name a dataset gets in results: its own name (a custom task's: its folder name), with a
    short hash of its resolved location when another task folder in the same results has that name
    (``disambiguate``), so two folders both called ``task`` never share results."""
    if not disambiguate:
        return splits.name
    return f"{splits.name}-{digest(str(Path(splits.root).resolve()))[:8]}"
