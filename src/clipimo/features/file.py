"""The features file (``.npz``): everything a training-free method needs, evaluable without a model.

Loading validates every key, shape, dtype and the L2 norms up front, so a bad file fails with one
message naming the file and key instead of a shape error deep inside a search.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, NoReturn

import numpy as np
from numpy.lib import format as npformat

from ..errors import ClipimoError
from ..utils.fileio import atomic_path, require_file

FEATURE_KEYS = (
    "text_weights",
    "cache_keys",
    "cache_keys_corrected",
    "cache_labels",
    "val_feats",
    "val_feats_corrected",
    "val_labels",
    "test_feats",
    "test_feats_corrected",
    "test_labels",
)
# Optional keys (docs/files.md, "Features file"): the E per-pass support features (for methods that fit on
# every augmented view)
# and the model's zero-shot logit scale and bias (CLIP: 100 and 0; SigLIP models have their own).
VIEW_KEYS = ("cache_views", "cache_views_corrected")
SCALAR_KEYS = {"logit_scale": 100.0, "logit_bias": 0.0}
# Optional [C]: the L2 norm of each class's unnormalised text embedding (the mean over its templates
# of the raw text-tower outputs); the linear probes that start from raw text embeddings need it.
TEXT_NORMS_KEY = "text_norms"
# Rows (and text-weight columns) must have unit L2 norm within this tolerance; half precision
# storage rounds more, so it gets a looser one.
NORM_TOL = {2: 1e-2, 4: 1e-3, 8: 1e-3}


@dataclass(frozen=True)
class FeatureSet:
    """Validated features: float32 ``[.., D]`` matrices, int64 labels, ``text_weights`` ``[D, C]``."""

    text_weights: np.ndarray
    cache_keys: np.ndarray
    cache_keys_corrected: np.ndarray
    cache_labels: np.ndarray
    val_feats: np.ndarray
    val_feats_corrected: np.ndarray
    val_labels: np.ndarray
    test_feats: np.ndarray
    test_feats_corrected: np.ndarray
    test_labels: np.ndarray
    cache_views: np.ndarray | None = None
    cache_views_corrected: np.ndarray | None = None
    logit_scale: float = SCALAR_KEYS["logit_scale"]
    logit_bias: float = SCALAR_KEYS["logit_bias"]
    text_norms: np.ndarray | None = None

    @property
    def has_views(self) -> bool:
        return self.cache_views is not None

    @property
    def dim(self) -> int:
        return self.text_weights.shape[0]

    @property
    def num_classes(self) -> int:
        return self.text_weights.shape[1]


def validate_features(arrays: Mapping[str, np.ndarray], source: str = "features") -> FeatureSet:
    """Check the features-file contract (docs/files.md) and return a :class:`FeatureSet`; ``source``
    names the file in errors.

    Extra keys are ignored (producers may add metadata); missing ones are all listed at once.
    The optional ``cache_views``/``cache_views_corrected`` ``[E, N, D]`` come as a pair or not at all.
    """
    missing = [k for k in FEATURE_KEYS if k not in arrays]
    if missing:
        kind = ("it holds the features of one image list ('clipimo features --images'), not a few-shot task; "
                if "feats" in arrays else "")
        raise ClipimoError(f"{source}: missing key(s) {', '.join(missing)}; {kind}a features file needs "
                           f"{', '.join(FEATURE_KEYS)}: write one with `clipimo features --task DIR --shots K "
                           "--seed S --out FILE.npz` or `clipimo run --save-features` (one file per cell)")

    def fail(key: str, what: str) -> NoReturn:
        raise ClipimoError(f"{source}: key '{key}' {what}")

    w = np.asarray(arrays["text_weights"])
    if w.ndim != 2 or min(w.shape) == 0:
        fail("text_weights", f"has shape {w.shape}, expected a non-empty [D, C] matrix")
    dim, num_classes = w.shape
    out: dict[str, np.ndarray] = {}
    # Shapes and dtypes first, so a transposed or truncated array is reported as such.
    for key in FEATURE_KEYS:
        a = np.asarray(arrays[key])
        if key.endswith("labels"):
            rows_key = key.replace("labels", "keys" if key.startswith("cache") else "feats")
            n = out[rows_key].shape[0]
            if a.shape != (n,):
                fail(key, f"has shape {a.shape}, expected ({n},) to match '{rows_key}'")
            if a.dtype.kind not in "iu":
                fail(key, f"has dtype {a.dtype}, expected integer class indices")
            if a.size and (a.min() < 0 or a.max() >= num_classes):
                fail(key, f"has labels in [{a.min()}, {a.max()}], expected [0, {num_classes - 1}] "
                          f"(C = {num_classes} from text_weights)")
        elif a.dtype.kind != "f":
            fail(key, f"has dtype {a.dtype}, expected floating point")
        elif key.endswith("_corrected") and a.shape != out[key[: -len("_corrected")]].shape:
            fail(key, f"has shape {a.shape}, expected {out[key[: -len('_corrected')]].shape} "
                      f"like '{key[: -len('_corrected')]}'")
        elif key != "text_weights" and (a.ndim != 2 or a.shape[1] != dim or a.shape[0] == 0):
            fail(key, f"has shape {a.shape}, expected [N, {dim}] with N > 0 "
                      f"(D = {dim} from text_weights, which must be [D, C]; it is {w.shape})")
        out[key] = a
    for key, a in out.items():
        if key.endswith("labels"):
            out[key] = a.astype(np.int64)
            continue
        if not np.isfinite(a).all():
            fail(key, "contains NaN or infinite values")
        norms = np.linalg.norm(a.astype(np.float64), axis=0 if key == "text_weights" else 1)
        worst = float(np.abs(norms - 1.0).max())
        if worst > NORM_TOL.get(a.dtype.itemsize, 1e-3):
            what = "columns" if key == "text_weights" else "rows"
            fail(key, f"{what} are not L2-normalised (largest |norm - 1| = {worst:.3g})")
        out[key] = a.astype(np.float32)
    out.update(_validate_views(arrays, out["cache_keys"].shape, fail))
    for key, default in SCALAR_KEYS.items():
        value = np.asarray(arrays.get(key, default))
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            fail(key, f"is {value!r}, expected one finite number")
        out[key] = float(value)
    if arrays.get(TEXT_NORMS_KEY) is not None:
        norms = np.asarray(arrays[TEXT_NORMS_KEY])
        if norms.shape != (num_classes,) or norms.dtype.kind not in "iuf" or not np.isfinite(norms).all() \
                or not (norms > 0).all():
            fail(TEXT_NORMS_KEY, f"has shape {norms.shape} / dtype {norms.dtype}, expected ({num_classes},) finite "
                                 "positive numbers (the norms of the classes' unnormalised text embeddings)")
        out[TEXT_NORMS_KEY] = norms.astype(np.float32)
    return FeatureSet(**out)


def _validate_views(arrays: Mapping[str, np.ndarray], keys_shape: tuple[int, ...],
                    fail) -> dict[str, np.ndarray]:
    present = [k for k in VIEW_KEYS if arrays.get(k) is not None]
    if not present:
        return {}
    if len(present) == 1:
        fail(VIEW_KEYS[1 - VIEW_KEYS.index(present[0])], f"is missing while '{present[0]}' is present "
             "(the views of both streams come as a pair)")
    out = {}
    for key in VIEW_KEYS:
        a = np.asarray(arrays[key])
        if a.dtype.kind != "f":
            fail(key, f"has dtype {a.dtype}, expected floating point")
        if a.ndim != 3 or a.shape[1:] != keys_shape or a.shape[0] == 0:
            fail(key, f"has shape {a.shape}, expected [E, {keys_shape[0]}, {keys_shape[1]}] with E > 0 "
                      "(E augmentation passes of the cache_keys images)")
        if not np.isfinite(a).all():
            fail(key, "contains NaN or infinite values")
        worst = float(np.abs(np.linalg.norm(a.astype(np.float64), axis=2) - 1.0).max())
        if worst > NORM_TOL.get(a.dtype.itemsize, 1e-3):
            fail(key, f"views are not L2-normalised (largest |norm - 1| = {worst:.3g})")
        out[key] = a.astype(np.float32)
    return out


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, refusing pickled objects, with errors that name the file."""
    path = require_file(path, "features file")
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ClipimoError(f"{path}: not a readable .npz features file without pickled objects "
                           f"({err})") from err


def _check_declared_sizes(path: Path) -> None:
    """Compare each array's header (shape x dtype) with the bytes its member holds, before anything
    is allocated: a damaged or crafted header could otherwise ask for terabytes."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = npformat.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    raise ClipimoError(f"{path}: array '{info.filename[:-4]}' has unsupported .npy version {version}")
                read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                shape, _, dtype = read_header(fh, max_header_size=10_000)
                need = math.prod(shape) * dtype.itemsize
                have = info.file_size - fh.tell()
            if need > have:
                raise ClipimoError(f"{path}: array '{info.filename[:-4]}' declares shape {shape} of {dtype} "
                                   f"({need} bytes) but holds {have} bytes: the file is damaged or not a features file")


def read_meta(arrays: Mapping[str, np.ndarray], source: str | os.PathLike) -> dict:
    """The optional JSON ``meta`` entry of a features file (``{}`` when absent); a malformed one is
    an error naming the file."""
    if "meta" not in arrays:
        return {}
    value = np.asarray(arrays["meta"])
    try:
        meta = json.loads(str(value[()] if value.ndim == 0 else value))
    except (json.JSONDecodeError, ValueError) as err:
        raise ClipimoError(f"{source}: its 'meta' entry is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ClipimoError(f"{source}: its 'meta' entry must be a JSON object, got {type(meta).__name__}")
    return meta


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read and validate a features ``.npz`` (no pickle)."""
    return validate_features(read_npz(path), str(path))


def save_features(path: str | os.PathLike, feats: FeatureSet | Mapping[str, np.ndarray]) -> None:
    """Validate then write atomically, so readers never see a partial or invalid file.

    Keys beyond the contract's (e.g. metadata strings) are written too.
    """
    arrays = feature_arrays(feats) if isinstance(feats, FeatureSet) else dict(feats)
    validate_features(arrays, str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def feature_arrays(feats: FeatureSet) -> dict[str, np.ndarray]:
    """The arrays of a :class:`FeatureSet` as a features file stores them (absent views left out)."""
    return {k: np.asarray(v) for k, v in asdict(feats).items() if v is not None}


def synthetic_features(num_classes: int = 10, shots: int = 4, n_val: int = 50, n_test: int = 50,
                       dim: int = 32, noise: float = 2.5, seed: int = 0, views: int = 3) -> FeatureSet:
    """A random task with class structure, for tests, benchmarks and smoke runs without a model.

    Like CLIP features, all images share a common direction (so image-image affinities are high
    and overlap across classes) plus a class direction and isotropic noise; text weights are
    their own common direction plus the class direction. "Corrected" features see the same noise
    with a stronger class direction, as IMO intends. With the defaults, 100 classes and 16 shots
    give zero-shot ~60% and Tip-Adapter ~70% top-1.

    ``views`` > 0 adds that many per-pass cache views: each key plus zero-mean view noise, so the
    normalised sum of the views is the key, as for real augmented features; 0 leaves them out.
    """
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray, axis: int = 1) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)

    centres = unit(rng.standard_normal((num_classes, dim)))
    image_dir, text_dir = unit(rng.standard_normal((2, dim)))

    def draw(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shared = 2.0 * image_dir + noise * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
        return unit(shared + 0.5 * centres[labels]), unit(shared + 0.6 * centres[labels])

    text = text_dir + 0.5 * centres + 0.4 * rng.standard_normal((num_classes, dim)) / np.sqrt(dim)
    arrays = {"text_weights": unit(text.T, axis=0), TEXT_NORMS_KEY: np.linalg.norm(text, axis=1).astype(np.float32)}
    for name, labels in (("cache", np.repeat(np.arange(num_classes), shots)),
                         ("val", rng.integers(0, num_classes, n_val)),
                         ("test", rng.integers(0, num_classes, n_test))):
        key = "cache_keys" if name == "cache" else f"{name}_feats"
        arrays[key], arrays[f"{key}_corrected"] = draw(labels)
        arrays[f"{name}_labels"] = labels.astype(np.int64)
    if views:
        view_rng = np.random.default_rng([seed, 1])  # the other arrays do not depend on ``views``
        jitter = 0.5 * view_rng.standard_normal((views, *arrays["cache_keys"].shape)) / np.sqrt(dim)
        jitter -= jitter.mean(axis=0)
        for key in ("cache_keys", "cache_keys_corrected"):
            arrays[key.replace("keys", "views")] = unit(arrays[key] + jitter, axis=2)
    return validate_features(arrays, "synthetic features")
