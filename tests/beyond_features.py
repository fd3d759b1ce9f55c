"""Small few-shot tasks with per-pass cache views for the methods beyond the paper (ProKeR, APE,
Tip-F): a shuffled cache order, one class with fewer shots, and a corrected stream that differs."""
from __future__ import annotations

import numpy as np

from clipimo.features.file import FeatureSet, validate_features


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)


def views_task(num_classes: int = 5, shots: int = 4, short_class: int = 2, short_shots: int = 1,
               passes: int = 3, dim: int = 12, n_val: int = 30, n_test: int = 30, seed: int = 0) -> FeatureSet:
    """Class ``short_class`` has ``short_shots`` support images, the others ``shots``; the cache is
    shuffled. Keys are the normalised mean of the unnormalised passes; each view is normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim))
    shared = rng.standard_normal(dim)
    mix = np.eye(dim) + 0.4 * rng.standard_normal((dim, dim))  # what the corrected stream sees

    counts = [short_shots if c == short_class else shots for c in range(num_classes)]
    cache_labels = rng.permutation(np.repeat(np.arange(num_classes), counts))

    def raw(labels: np.ndarray, extra: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        noise = 1.4 * rng.standard_normal(extra + (len(labels), dim))
        base = 1.5 * shared + centres[labels] + noise
        return base, base @ mix + 0.8 * centres[labels]

    views, views_c = raw(cache_labels, (passes,))
    text = unit((0.5 * shared + centres + 0.6 * rng.standard_normal((num_classes, dim))).T, axis=0)
    arrays = {
        "text_weights": text,
        "cache_views": unit(views), "cache_views_corrected": unit(views_c),
        "cache_keys": unit(views.mean(0)), "cache_keys_corrected": unit(views_c.mean(0)),
        "cache_labels": cache_labels.astype(np.int64),
    }
    for split, n in (("val", n_val), ("test", n_test)):
        labels = rng.integers(0, num_classes, n)
        x, xc = raw(labels)
        arrays.update({f"{split}_feats": unit(x), f"{split}_feats_corrected": unit(xc),
                       f"{split}_labels": labels.astype(np.int64)})
    return validate_features(arrays, "views task")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1) == labels).mean())


def first_best_loop(scores) -> tuple:
    """The official selection over ``(point, score)`` in loop order: replace only on strictly greater
    (the official codes start from 0 and crash when every point scores 0; clipimo then takes the
    first point, which starting from -inf gives too)."""
    best, where = -np.inf, None
    for point, score in scores:
        if score > best:
            best, where = score, point
    return best, where
