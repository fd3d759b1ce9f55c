"""Training-free overlap corrections for the corrected-stream slot (docs/methods.md, "Training-free corrections").

Each correction is an affine map of the stored L2-normalised image features,
``x~ = normalize((x - mean) @ matrix)``, so it can replace the IMO adapter's corrected stream
without a model: every ``-imo`` method then runs unchanged on it (image-image terms on the
corrected arrays, text terms on the original ones).

- ``isoclip`` (Magistri et al., CVPR 2026): drop the ``ktop`` largest and ``kbottom`` smallest
  directions of the inter-modal operator ``proj_image @ proj_text^T``. Written after the
  projection: ``M = pinv(proj) U_k U_k^T proj``, exact because ``U_k`` lies in ``range(proj)``.
- ``textpca`` (Herzog & Wang, CVPR 2026): projection on the top D/2 principal directions of the
  ImageNet class-name text embeddings.
- ``imagepca`` (OURS, not from a paper): on a generic image set, remove the top-k principal
  directions after centring ("all-but-the-top"), or whiten with a shrunk covariance.
- ``imo``: the adapter itself (no map; the extractor's corrected stream).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.generic import read_csv_list, read_image_folder
from ..data.templates import IMAGENET_TEMPLATES
from ..defaults import CORRECTIONS, IMAGEPCA_DEFAULT
from ..errors import ClipimoError
from ..utils import fileio
from .file import FeatureSet

# IsoCLIP's CLI defaults at D = 512; other widths scale them.
ISOCLIP_KTOP, ISOCLIP_KBOTTOM, ISOCLIP_REF_DIM = 150, 50, 512
WHITEN_SHRINK = 1e-2


@dataclass(frozen=True)
class LinearCorrection:
    """``x -> normalize((x - mean) @ matrix)`` with what made it (for the features metadata)."""

    name: str
    matrix: np.ndarray
    mean: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map rows of ``x`` ``[..., D]`` (float32 out, each row L2-normalised)."""
        x = x.astype(np.float64)
        if self.mean is not None:
            x = x - self.mean
        y = x @ self.matrix
        norms = np.linalg.norm(y, axis=-1, keepdims=True)
        if not np.all(norms > 1e-12):
            raise ClipimoError(f"the {self.name} correction maps some features to zero; they cannot be normalised")
        return (y / norms).astype(np.float32)


def parse_corrections(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"imo,isoclip"`` or a list, checked and de-duplicated in order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in CORRECTIONS]
    if unknown or not names:
        raise ClipimoError(f"unknown or missing correction(s) {unknown or spec!r}; choose from {', '.join(CORRECTIONS)}")
    return list(dict.fromkeys(names))


def isoclip_ranks(dim: int, ktop: int | None = None, kbottom: int | None = None) -> tuple[int, int]:
    """IsoCLIP's (ktop, kbottom), by default scaled from 150 / 50 at D = 512."""
    ktop = round(ISOCLIP_KTOP * dim / ISOCLIP_REF_DIM) if ktop is None else ktop
    kbottom = round(ISOCLIP_KBOTTOM * dim / ISOCLIP_REF_DIM) if kbottom is None else kbottom
    if ktop < 0 or kbottom < 0 or ktop + kbottom >= dim:
        raise ClipimoError(f"isoclip keeps directions ktop..{dim}-kbottom of {dim}: got ktop={ktop}, kbottom={kbottom}")
    return ktop, kbottom


def isoclip_basis(image_proj: np.ndarray, text_proj: np.ndarray, ktop: int, kbottom: int) -> np.ndarray:
    """``U_k`` ``[width, r - ktop - kbottom]``: left singular vectors of ``image_proj text_proj^T``
    (``[width, D]`` and ``[width_t, D]``, open_clip's ``visual.proj`` and ``text_projection``)."""
    psi = image_proj.astype(np.float64) @ text_proj.astype(np.float64).T
    u, _, _ = np.linalg.svd(psi, full_matrices=False)
    rank = min(image_proj.shape[1], *psi.shape)
    return u[:, ktop: rank - kbottom]


def isoclip(image_proj: np.ndarray, text_proj: np.ndarray, ktop: int | None = None,
            kbottom: int | None = None) -> LinearCorrection:
    """The post-projection IsoCLIP map ``M = pinv(proj) U_k U_k^T proj`` ``[D, D]``."""
    proj = image_proj.astype(np.float64)
    ktop, kbottom = isoclip_ranks(proj.shape[1], ktop, kbottom)
    if np.linalg.matrix_rank(text_proj.astype(np.float64)) < text_proj.shape[1]:
        raise ClipimoError("isoclip needs a text projection of full rank")
    uk = isoclip_basis(proj, text_proj, ktop, kbottom)
    matrix = np.linalg.pinv(proj) @ uk @ uk.T @ proj
    return LinearCorrection("isoclip", matrix, meta={"ktop": ktop, "kbottom": kbottom})


def textpca(text_embeddings: np.ndarray, keep: int | None = None) -> LinearCorrection:
    """Projector ``U^T U`` on the top ``keep`` (default D/2) principal directions of the centred
    text embeddings ``[C, D]`` (the features stay uncentred)."""
    t = text_embeddings.astype(np.float64)
    keep = t.shape[1] // 2 if keep is None else keep
    if not 0 < keep <= t.shape[1]:
        raise ClipimoError(f"textpca keeps 1..{t.shape[1]} directions, got {keep}")
    if t.shape[0] <= keep:  # the centred embeddings span at most C - 1 directions: the rest would be arbitrary
        raise ClipimoError(f"textpca keeps the top {keep} principal directions of the class-name text embeddings, "
                           f"but {t.shape[0]} names span at most {t.shape[0] - 1}: give more than {keep} class "
                           "names (the paper uses ImageNet's 1,000)")
    _, vecs = np.linalg.eigh(np.cov(t.T))
    u = vecs[:, ::-1][:, :keep]
    return LinearCorrection("textpca", u @ u.T, meta={"keep": keep, "classes": int(t.shape[0])})


def parse_imagepca(spec: str) -> tuple[str, int]:
    """``"abtt-K"`` (all-but-the-top K) or ``"whiten"``."""
    m = re.fullmatch(r"abtt-(\d+)|whiten", spec.strip())
    if not m:
        raise ClipimoError(f"imagepca mode {spec!r}: expected abtt-K (remove the top K principal directions) or whiten")
    return ("whiten", 0) if m.group(1) is None else ("abtt", int(m.group(1)))


def imagepca(feats: np.ndarray, spec: str = IMAGEPCA_DEFAULT) -> LinearCorrection:
    """OUR control, estimated on generic image features ``[n, D]``: centre, then remove the top-k
    principal directions, or whiten with covariance ``S + eps tr(S)/D I`` (eps = 1e-2)."""
    mode, k = parse_imagepca(spec)
    x = feats.astype(np.float64)
    dim = x.shape[1]
    if x.shape[0] < 2:
        raise ClipimoError("imagepca needs at least 2 generic images")
    mean = x.mean(0)
    cov = np.cov(x.T)
    evals, vecs = np.linalg.eigh(cov)
    if mode == "abtt":
        if k >= dim:
            raise ClipimoError(f"imagepca abtt-{k}: must keep some of the {dim} directions")
        top = vecs[:, ::-1][:, :k]
        matrix = np.eye(dim) - top @ top.T
    else:
        shrunk = evals.clip(min=0) + WHITEN_SHRINK * np.trace(cov) / dim
        matrix = vecs @ np.diag(shrunk ** -0.5) @ vecs.T
    return LinearCorrection("imagepca", matrix, mean, meta={"mode": spec, "images": int(x.shape[0]), "ours": True})


# ---- wiring: build a correction from a backbone, apply it to a features set ----------------------

def projections(model) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's ``visual.proj`` ``[width, D]`` and ``text_projection`` ``[width_t, D]``."""
    image_proj = getattr(getattr(model, "visual", None), "proj", None)
    text_proj = getattr(model, "text_projection", None)
    if isinstance(text_proj, torch.nn.Linear):  # some open_clip text towers use a Linear layer
        text_proj = text_proj.weight.T
    if not isinstance(image_proj, torch.Tensor) or not isinstance(text_proj, torch.Tensor):
        raise ClipimoError("isoclip needs a model with a ViT image projection matrix (visual.proj) and a "
                           "text_projection; this model has none")
    return image_proj.detach().float().cpu().numpy(), text_proj.detach().float().cpu().numpy()


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Class names, one per line; ImageNet's ``classnames.txt`` lines ``<wnid> <name>`` are accepted."""
    path = Path(path)
    if not path.is_file():
        raise ClipimoError(f"textpca needs the ImageNet class names: {path} does not exist (one name per line, "
                           "or ImageNet's classnames.txt with '<wnid> <name>' lines)")
    lines = [ln.strip() for ln in fileio.read_text_file(path, "textpca class names file").splitlines() if ln.strip()]
    names = [ln.split(" ", 1)[1] if re.fullmatch(r"n\d{8} .+", ln) else ln for ln in lines]
    if len(names) < 2:
        raise ClipimoError(f"{path}: textpca needs at least 2 class names, found {len(names)}")
    return names


def build_correction(name: str, extractor, classnames_file: str | os.PathLike | None = None,
                     generic_images: str | os.PathLike | None = None,
                     imagepca_mode: str = IMAGEPCA_DEFAULT) -> LinearCorrection | None:
    """The map of correction ``name`` for ``extractor``'s backbone (``None`` for ``imo``: the adapter).

    textpca encodes ``classnames_file`` with the 7 ImageNet templates; imagepca encodes the generic
    images (CSV ``path,label`` or an image folder) with the eval transform.
    """
    if name == "imo":
        return None
    if name == "isoclip":
        return isoclip(*projections(extractor.backbone.model))
    if name == "textpca":
        if classnames_file is None:
            raise ClipimoError("textpca needs the ImageNet class names: pass --textpca-classnames FILE")
        names = read_name_list(classnames_file)
        weights = extractor.text_weights(names, IMAGENET_TEMPLATES).numpy()
        corr = textpca(weights.T)
        return dataclasses.replace(corr, meta={**corr.meta, "classnames_sha256": fileio.sha256_file(Path(classnames_file))})
    if name == "imagepca":
        if generic_images is None:
            raise ClipimoError("imagepca is estimated on the generic image set: pass --imagepca-images "
                               "(CSV path,label or an image folder; the adapter's training images)")
        source = Path(generic_images)
        items = read_image_folder(source)[0] if source.is_dir() else read_csv_list(source, verify_files=False)[0]
        feats = extractor.image_features(items, desc="imagepca generic images").original.numpy()
        return imagepca(feats, imagepca_mode)
    raise ClipimoError(f"unknown correction {name!r}; choose from {', '.join(CORRECTIONS)}")


def fingerprint(corr: LinearCorrection | None) -> dict[str, Any]:
    """What a result's cache key needs to know about a correction (its map's digest and settings)."""
    if corr is None:
        return {"name": "imo"}
    digest = hashlib.sha256(corr.matrix.astype(np.float64).tobytes())
    if corr.mean is not None:
        digest.update(corr.mean.astype(np.float64).tobytes())
    return {"name": corr.name, **corr.meta, "sha256": digest.hexdigest()}


MAP_KEYS = ("correction_matrix", "correction_mean")  # a features file's map of its corrected stream


def map_arrays(corr: LinearCorrection | None) -> dict[str, np.ndarray]:
    """The arrays a features file stores so its corrected stream can be reproduced on new images
    (``{}`` for imo: that is the adapter file)."""
    if corr is None:
        return {}
    arrays = {"correction_matrix": corr.matrix.astype(np.float64)}
    if corr.mean is not None:
        arrays["correction_mean"] = corr.mean.astype(np.float64)
    return arrays


def saved_map(arrays: Mapping[str, Any], recorded: Mapping[str, Any] | None, source: str) -> LinearCorrection | None:
    """The map of a saved corrected stream (``None`` for imo), from ``arrays`` (a features or
    classifier file's) and the ``recorded`` :func:`fingerprint`; its digest must match the record."""
    recorded = dict(recorded or {"name": "imo"})
    name = recorded.get("name")
    if name == "imo":
        return None
    if "correction_matrix" not in arrays:
        raise ClipimoError(f"{source}: its corrected stream is the {name} correction, but the file does not store its "
                           "map (correction_matrix), so new images could not be corrected alike; write the features "
                           "again with `clipimo run --save-features`")
    mean = arrays.get("correction_mean")
    corr = LinearCorrection(str(name), np.asarray(arrays["correction_matrix"], np.float64),
                            None if mean is None else np.asarray(mean, np.float64),
                            {k: v for k, v in recorded.items() if k not in ("name", "sha256")})
    if fingerprint(corr) != recorded:
        raise ClipimoError(f"{source}: the stored {name} map does not match the correction recorded in its metadata")
    return corr


def corrected_features(feats: FeatureSet, corr: LinearCorrection | None) -> FeatureSet:
    """``feats`` with every ``*_corrected`` array replaced by the map of the original one (keys:
    of the normalised mean, views: of each pass). ``None`` (imo) returns ``feats``."""
    if corr is None:
        return feats
    changes = {f"{key}_corrected": corr.apply(getattr(feats, key)) for key in ("cache_keys", "val_feats", "test_feats")}
    if feats.cache_views is not None:
        changes["cache_views_corrected"] = corr.apply(feats.cache_views)
    return dataclasses.replace(feats, **changes)
