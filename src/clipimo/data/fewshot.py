"""Few-shot support sets that depend only on (dataset, k, seed), saved as inspectable JSON."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ClipimoError
from ..utils.fileio import write_json
from .benchmarks import DatasetSplits
from .items import LabelledImage

INDEX_FORMAT = "clipimo-support-index"
INDEX_VERSION = 1


def stable_rng(*key: object) -> np.random.Generator:
    """A numpy Generator seeded from a SHA-256 of ``key`` (stable across processes and Pythons,
    unlike ``hash``); global RNG state is never touched."""
    digest = hashlib.sha256(json.dumps([str(part) for part in key]).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def sample_per_class(items: Sequence[LabelledImage], per_class: int,
                     rng: np.random.Generator) -> list[LabelledImage]:
    """min(per_class, n_c) items of every class, without replacement, sorted by (label, path).

    Candidates are sorted by path first, so the result does not depend on the input order.
    """
    if per_class < 1:
        raise ClipimoError(f"images per class must be at least 1, got {per_class}")
    by_label: dict[int, list[LabelledImage]] = {}
    for item in sorted(items, key=lambda it: (it.label, it.path)):
        by_label.setdefault(item.label, []).append(item)
    chosen: list[LabelledImage] = []
    for label in sorted(by_label):
        candidates = by_label[label]
        if len(candidates) <= per_class:
            chosen.extend(candidates)
        else:
            picks = np.sort(rng.choice(len(candidates), per_class, replace=False))
            chosen.extend(candidates[i] for i in picks)
    return chosen


def sample_few_shot(dataset: str, train: Sequence[LabelledImage], k: int,
                    seed: int) -> list[LabelledImage]:
    """The k-shot support set for ``seed``: a pure function of its arguments. Pass the
    canonical dataset name (``DatasetSplits.name``): an alias would give a different sample."""
    return sample_per_class(train, k, stable_rng("support", dataset, k, seed))


def save_support_index(path: str | os.PathLike, splits: DatasetSplits, k: int, seed: int,
                       support: Sequence[LabelledImage]) -> None:
    """Write the support set as JSON: dataset, k, seed and [relpath, label] per image."""
    write_json(path, {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "dataset": splits.name,
        "k": k,
        "seed": seed,
        "num_classes": splits.num_classes,
        "items": [[splits.relpath(item), item.label] for item in support],
    })


def load_support_index(path: str | os.PathLike, splits: DatasetSplits) -> dict:
    """Read a support index; ``items`` come back as LabelledImage under ``splits.root``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipimoError(f"{path}: support index not found") from None
    except json.JSONDecodeError as err:
        raise ClipimoError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise ClipimoError(f"{path}: not a clipimo support index (format {INDEX_FORMAT!r})")
    if data["dataset"] != splits.name:
        raise ClipimoError(f"{path}: support index is for {data['dataset']!r}, not {splits.name!r}")
    data["items"] = [LabelledImage(os.path.join(splits.root, rel), int(label))
                     for rel, label in data["items"]]
    return data


def few_shot_support(splits: DatasetSplits, k: int, seed: int,
                     index_path: str | os.PathLike | None = None) -> list[LabelledImage]:
    """Sample the support set; with ``index_path``, write it there, or, if that file exists,
    check it holds exactly this set and fail otherwise (a file left by another tool or
    another dataset version is never silently used)."""
    support = sample_few_shot(splits.name, splits.train, k, seed)
    if index_path is None:
        return support
    if Path(index_path).exists():
        saved = load_support_index(index_path, splits)
        same = (saved["k"] == k and saved["seed"] == seed
                and [splits.relpath(it) for it in saved["items"]]
                == [splits.relpath(it) for it in support]
                and [it.label for it in saved["items"]] == [it.label for it in support])
        if not same:
            raise ClipimoError(
                f"{index_path}: existing support index does not match the {splits.name} "
                f"k={k} seed={seed} sample; delete it or use another path"
            )
    else:
        save_support_index(index_path, splits, k, seed, support)
    return support
