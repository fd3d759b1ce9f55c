"""What a stored cell of ``clipimo run`` depends on, and how two fingerprints differ.

A cell is reused only when its stored fingerprint equals the one computed now, so changed images,
labels, support sets, validation sets, weights, adapters, grids or precision always recompute it.
Add a field to the run's settings (e.g. a new run option) and every stale cell is recomputed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..data.identity import items_digest
from ..data.items import LabelledImage


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
        if isinstance(a, Mapping) and isinstance(b, Mapping) and key == "dataset":
            changes += [f"dataset.{k}" for k in _differing(a, b)]
        elif isinstance(a, Mapping) and isinstance(b, Mapping) and key == "run":
            for k in _differing(a, b):
                inner = a.get(k), b.get(k)
                if k == "method_options" and all(isinstance(v, Mapping) for v in inner):
                    changes += [f"method_options.{o}" for o in _differing(*inner)]  # the setting, not just "a setting"
                else:
                    changes.append(k)
        else:
            changes.append(_PART_NAMES.get(key, key))
    return changes


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
