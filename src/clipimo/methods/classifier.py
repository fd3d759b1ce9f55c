"""A tuned few-shot classifier in one file, to classify new images with a method chosen on a task.

The file is safetensors (text weights, cache keys of both streams, cache labels; for the methods
that fit on every augmented view, GDA and ProKeR, the per-pass views of both streams too; for Tip-F
its trained keys and for the linear probes (LP++, ZS-LP, CLAP) their trained heads, so predicting
never trains; TDA, which adapts on the stream it classifies, has no classifier to save; for a corrected stream other than the IMO adapter,
that correction's map) with one JSON metadata entry: method, chosen hyper-parameters, the method
settings that shaped its logits (ProKeR's views mode, APE's configuration, Tip-F's training),
class names, the backbone identity and adapter hash the features came from, the correction, the
zero-shot logit scale and bias, and provenance. No pickle. Logits come from
:func:`clipimo.methods.predict.logits_at`, the one place a method's logits are computed; Tip-X
rescales its KL term over the images classified together, as in evaluation.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import ClipimoError
from ..features.corrections import MAP_KEYS, LinearCorrection, fingerprint, map_arrays, saved_map
from ..features.file import FeatureSet
from ..model.hub import is_hub_ref
from ..utils import fileio
from ..utils.device import resolve_device
from .common import MethodOptions, Problem, Split
from .names import METHOD_NAMES
from .predict import HPARAMS, logits_at
from .registry import parse_methods

if TYPE_CHECKING:
    from ..features.extractor import FeatureExtractor

FORMAT = "clipimo-classifier"
FORMAT_VERSION = 2
# Version 1 files record no method options, correction or trained keys: still read for the
# methods whose logits they determine.
_V1_METHODS = frozenset({"zs", "tip", "tipx", "gda"})
META_KEY = "clipimo_classifier"
_TENSORS = ("text_weights", "cache_keys", "cache_keys_corrected", "cache_labels")
_VIEWS = ("cache_views", "cache_views_corrected")  # [E, N, D]: stored for the methods that fit on them
# The linear probes' trained heads, stored as "head_<name>" tensors so predicting never trains.
_HEAD_PREFIX = "head_"
LINEAR_PROBES = ("lp++", "zs-lp", "clap")
# Backbone identity fields that must agree between the classifier and the model given to predict.
_IDENTITY_KEYS = ("model", "weights", "config_sha256", "quick_gelu")


@dataclass(frozen=True)
class Classifier:
    """Text weights ``[D, C]``, cache keys ``[N, D]`` of both streams, labels ``[N]``, and what they mean."""

    method: str
    hparams: dict[str, float]
    text_weights: torch.Tensor
    cache_keys: torch.Tensor
    cache_keys_corrected: torch.Tensor
    cache_labels: torch.Tensor
    classnames: list[str]
    backbone: dict[str, Any]
    adapter_sha256: str | None
    logit_scale: float = 100.0
    logit_bias: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    cache_views: torch.Tensor | None = None
    cache_views_corrected: torch.Tensor | None = None
    # ProKeR's views mode (as resolved), APE's config and dataset: what logits_at needs beyond hparams.
    options: dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(MethodOptions()))
    correction: LinearCorrection | None = None  # the corrected stream's map; None: the IMO adapter
    trained_keys: bool = False  # Tip-F: the keys of its stream are the trained ones (scored as Tip)
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # LP++: weight/bias/alpha; ZS-LP, CLAP: prototypes
    # How the features were made: model, pretrained and adapter as given (files absolute), so
    # `clipimo predict` needs no model flags; ``backbone`` and ``adapter_sha256`` check them.
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_adapter(self) -> bool:
        return self.method.endswith("-imo") and self.correction is None

    @property
    def scored_as(self) -> str:
        """The method whose logits are computed: Tip-F with its trained keys is Tip-Adapter."""
        return self.method.replace("tip-f", "tip") if self.trained_keys else self.method

    @classmethod
    def from_features(cls, feats: FeatureSet, method: str, hparams: Mapping[str, float], meta: Mapping[str, Any],
                      provenance: Mapping[str, Any] | None = None, options: MethodOptions | None = None,
                      settings: Mapping[str, Any] | None = None, correction: LinearCorrection | None = None,
                      device: str | torch.device = "cpu") -> "Classifier":
        """The classifier of ``method`` at ``hparams`` on a features file's cache; ``meta`` is the
        file's metadata (backbone identity, adapter, class names, correction), which predictions are
        checked against. ``options`` and ``settings`` (the method's result ``meta``) are those of the
        evaluation: Tip-F's keys are trained here with them, on ``device``, and must reach the
        evaluated epoch. ``correction`` is the map of a non-IMO corrected stream
        (:func:`clipimo.features.corrections.saved_map`)."""
        (method,) = parse_methods([method])
        base, corrected = method.removesuffix("-imo"), method.endswith("-imo")
        if base == "tda":
            raise ClipimoError(f"{method} adapts to the test stream it classifies, so it has no fixed classifier to save; "
                               "save another method")
        backbone = meta.get("backbone")
        if not isinstance(backbone, dict) or not backbone.get("model"):
            raise ClipimoError("the features file records no backbone identity, so a classifier made from it could "
                               "not check the model it is used with; write the features with `clipimo features "
                               "--task DIR --shots K --seed S` or `clipimo run --save-features`")
        recorded = dict(meta.get("correction") or {"name": "imo"})
        if not corrected:  # only the -imo methods see the corrected stream
            correction = None
        elif fingerprint(correction) != recorded:
            raise ClipimoError(f"the features file's corrected stream is {recorded.get('name')}, but the classifier "
                               f"was given the map of {fingerprint(correction)['name']}")
        adapter = meta.get("adapter")
        adapter_sha = adapter.get("sha256") if isinstance(adapter, dict) else meta.get("adapter_sha256")
        if corrected and correction is None and not adapter_sha:
            raise ClipimoError(f"{method} uses the corrected stream, but the features file records no adapter")
        fits_views = base in ("gda", "proker", "tip-f", *LINEAR_PROBES)
        if fits_views and not feats.has_views:
            raise ClipimoError(f"{method} fits on every augmented view of the support set, but the features file has "
                               "no cache_views: write it with `clipimo features --task` or `clipimo run --save-features`")
        opts, settings = options or MethodOptions(), dict(settings or {})
        if base == "proker" and "views" in settings:  # "auto" resolved as in the evaluation
            opts = dataclasses.replace(opts, proker_views=settings["views"])
        tensors = {k: torch.from_numpy(getattr(feats, k)) for k in _TENSORS}
        if base == "tip-f":
            from .tipf import trained_problem

            problem = Problem.from_features(feats, resolve_device(device))
            trained, training = trained_problem(problem, corrected, opts)
            if "epoch" in settings and training["epoch"] != settings["epoch"]:
                raise ClipimoError(f"retraining {method} for the classifier chose epoch {training['epoch']}, the "
                                   f"evaluation epoch {settings['epoch']}: save the classifier on the device the "
                                   "method was evaluated on")
            key = "cache_keys_corrected" if corrected else "cache_keys"
            tensors[key] = trained.keys(corrected).detach().cpu()
            fits_views = False  # the trained keys are all that is needed
        head = _trained_head(feats, method, opts, {**hparams, **settings}, device) if base in LINEAR_PROBES else {}
        if head:
            fits_views = False
        views = {k: torch.from_numpy(getattr(feats, k)) for k in _VIEWS} if fits_views else {}
        classnames = list(meta.get("classnames") or [str(i) for i in range(feats.num_classes)])
        if len(classnames) != feats.num_classes:
            raise ClipimoError(f"the features file names {len(classnames)} classes but its text weights have "
                               f"{feats.num_classes}")
        return cls(method=method, hparams={k: float(v) for k, v in hparams.items()}, **tensors,
                   classnames=classnames, backbone=dict(backbone), adapter_sha256=adapter_sha,
                   logit_scale=feats.logit_scale, logit_bias=feats.logit_bias,
                   provenance={**(provenance or {}), "settings": settings}, options=dataclasses.asdict(opts),
                   correction=correction, trained_keys=base == "tip-f", head=head,
                   source=dict(meta.get("source") or {}), **views)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as safetensors + JSON metadata."""
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "method": self.method, "hparams": self.hparams,
                "classnames": self.classnames, "backbone": self.backbone, "adapter_sha256": self.adapter_sha256,
                "logit_scale": self.logit_scale, "logit_bias": self.logit_bias, "provenance": self.provenance,
                "options": self.options, "correction": fingerprint(self.correction), "trained_keys": self.trained_keys,
                "source": self.source}
        tensors = {k: getattr(self, k) for k in _TENSORS + _VIEWS if getattr(self, k) is not None}
        tensors.update({_HEAD_PREFIX + k: v for k, v in self.head.items()})
        tensors.update({k: torch.from_numpy(v) for k, v in map_arrays(self.correction).items()})
        fileio.write_safetensors(path, tensors, META_KEY, meta)

    def model_source(self, model: str | None = None, pretrained: str | None = None,
                     adapter: str | None = None) -> dict[str, str | None]:
        """The model, weights and adapter to predict with: those the classifier records, each replaced
        by the value given. A value that contradicts the record (another architecture or tag, a weights
        or adapter file with another hash) or a recorded file that is gone fails here, in one line,
        before any model loads; :meth:`check_extractor` checks the loaded model again."""
        ident, rec = self.backbone, self.source
        weights = str(ident.get("weights", ""))
        recorded_pretrained = rec.get("pretrained") if rec else (weights[4:] if weights.startswith("tag:") else None)
        chosen = {"model": model or rec.get("model") or ident.get("model"),
                  "pretrained": recorded_pretrained if pretrained is None else pretrained,
                  "adapter": adapter or rec.get("adapter")}
        made = f"the classifier was made with {ident.get('model')} ({weights})"
        if model and not model.endswith(".json") and ident.get("model") and model != ident["model"]:
            raise ClipimoError(f"{made}, not --model {model}: drop --model to use the classifier's")
        if pretrained is not None:
            _check_weights(pretrained, ident, made)
        elif weights.startswith("sha256:") and not (chosen["pretrained"] and os.path.isfile(chosen["pretrained"])):
            raise ClipimoError(f"{made}; its weights file {chosen['pretrained'] or '(not recorded)'} is not there: "
                               "pass --pretrained FILE")
        if self.needs_adapter and not chosen["adapter"]:
            raise ClipimoError(f"the classifier's method {self.method} needs the corrected stream: pass the adapter "
                               f"file it was made with (--adapter, sha256 {str(self.adapter_sha256)[:12]}...)")
        if adapter is None and not self.needs_adapter:  # the original stream alone: no adapter to load
            chosen["adapter"] = None
        path = chosen["adapter"]
        if path and not is_hub_ref(path):
            if not os.path.isfile(path):
                raise ClipimoError(f"the classifier's adapter file {path} is not there: pass --adapter FILE")
            if self.adapter_sha256 and fileio.sha256_file(path) != self.adapter_sha256:
                raise ClipimoError(f"the adapter {path} is not the one the classifier was made with "
                                   f"(sha256 {self.adapter_sha256[:12]}...)")
        return chosen

    def check_extractor(self, extractor: FeatureExtractor) -> None:
        """Refuse a backbone or adapter other than the ones the classifier's features came from."""
        ours, theirs = self.backbone, extractor.backbone.identity
        differ = [k for k in _IDENTITY_KEYS if k in ours and k in theirs and ours[k] != theirs[k]]
        if differ:
            raise ClipimoError(
                f"the classifier was made with backbone {ours.get('model')} ({ours.get('weights')}), but the model "
                f"given is {theirs.get('model')} ({theirs.get('weights')}); they differ in {', '.join(differ)}: "
                "pass the --model/--pretrained the classifier was made with")
        given = extractor.adapter_hash
        if self.needs_adapter and given is None:
            raise ClipimoError(f"the classifier's method {self.method} needs the corrected stream: pass the adapter "
                               f"file it was made with (--adapter, sha256 {self.adapter_sha256[:12]}...)")
        if given is not None and given != self.adapter_sha256:
            want = f"sha256 {self.adapter_sha256[:12]}..." if self.adapter_sha256 else "no adapter"
            raise ClipimoError(f"the adapter given (sha256 {given[:12]}...) is not the one the classifier was made "
                               f"with ({want})")

    def logits(self, original: torch.Tensor, corrected: torch.Tensor | None = None,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """``[n, C]`` logits of the classifier's method for query features of both streams
        (``corrected`` defaults to ``original``, right for methods that only use the original one;
        with a training-free correction it is that map of ``original``, whatever is given)."""
        if self.correction is not None:  # a training-free correction: its map of the original features
            corrected = torch.from_numpy(self.correction.apply(original.cpu().numpy()))
        original = original.to(device, torch.float32)
        corrected = original if corrected is None else corrected.to(device, torch.float32)
        query = Split(original, corrected, torch.zeros(len(original), dtype=torch.int64, device=device))
        problem = Problem(
            text_weights=self.text_weights.to(device), cache_keys=self.cache_keys.to(device),
            cache_keys_corrected=self.cache_keys_corrected.to(device), cache_labels=self.cache_labels.to(device),
            val=query, test=query, logit_scale=self.logit_scale, logit_bias=self.logit_bias,
            **{k: getattr(self, k).to(device) for k in _VIEWS if getattr(self, k) is not None})
        out = torch.empty(len(original), len(self.classnames), device=device)
        head = {k: v.to(device) for k, v in self.head.items()} or None
        for rows, chunk in logits_at(problem, query, self.scored_as, self.hparams,
                                     options=MethodOptions(**self.options), head=head):
            out[rows] = chunk
        return out

    def predict(self, extractor: FeatureExtractor, paths: Sequence[str], top_k: int = 5, skip_unreadable: bool = False,
                device: str | torch.device = "cpu") -> list[dict[str, Any]]:
        """Top-k class names and probabilities (softmax of the method's logits) per image, in order;
        ``extractor`` must use the classifier's backbone and adapter."""
        from ..data.items import LabelledImage

        if top_k < 1:
            raise ClipimoError(f"--top-k must be >= 1, got {top_k}")
        self.check_extractor(extractor)
        feats = extractor.image_features([LabelledImage(p, 0) for p in paths], skip_unreadable=skip_unreadable,
                                         desc="predict")
        if feats.original.shape[1] != self.text_weights.shape[0]:
            raise ClipimoError(f"the model gives {feats.original.shape[1]}-dimensional image features, the classifier "
                               f"holds {self.text_weights.shape[0]}-dimensional ones: not the model it was made with")
        probs = torch.softmax(self.logits(feats.original, feats.corrected_or_original, resolve_device(device)),
                              dim=1).cpu()
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [{"path": path, "top_k": [{"label": self.classnames[i], "probability": float(v)}
                                         for v, i in zip(vs.tolist(), ix.tolist())]}
                for path, vs, ix in zip(feats.paths, values, indices)]


def _check_weights(pretrained: str, identity: Mapping[str, Any], made: str) -> None:
    """A --pretrained value that cannot be the recorded weights: another tag, a file with another hash,
    weights for random init or none for trained weights."""
    weights = str(identity.get("weights", ""))
    none = pretrained.lower() in ("", "none")
    if none != bool(identity.get("random_init")):
        raise ClipimoError(f"{made}, not --pretrained {pretrained}")
    if weights.startswith("tag:") and not os.path.exists(pretrained) and pretrained != weights[4:]:
        raise ClipimoError(f"{made}, not --pretrained {pretrained}")
    if weights.startswith("sha256:") and os.path.isfile(pretrained) and fileio.sha256_file(pretrained) != weights[7:]:
        raise ClipimoError(f"{made}; --pretrained {pretrained} is another file (sha256 differs)")


def _check_parts(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike) -> None:
    """A classifier file whose parts disagree (a tampered or damaged file) is one ClipimoError naming
    the first disagreement, never a traceback or silently wrong predictions."""
    def bad(what: str) -> ClipimoError:
        return ClipimoError(f"classifier file {path}: {what}")

    method = meta.get("method")
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise bad(f"unknown method {method!r}")
    text = tensors["text_weights"]
    if text.ndim != 2 or not text.is_floating_point():
        raise bad(f"text_weights must be a float [D, C] matrix, got {tuple(text.shape)} {text.dtype}")
    dim, classes = text.shape
    names = meta.get("classnames")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != classes:
        raise bad(f"its class names ({len(names) if isinstance(names, list) else names!r}) do not match the "
                  f"{classes} columns of its text weights")
    for key in ("cache_keys", "cache_keys_corrected", *(k for k in _VIEWS if k in tensors)):
        t = tensors[key]
        if t.ndim not in (2, 3) or t.shape[-1] != dim or not t.is_floating_point():
            raise bad(f"{key} {tuple(t.shape)} does not hold {dim}-dimensional features like its text weights")
    rows = tensors["cache_keys"].shape[0]
    labels = tensors["cache_labels"]
    if labels.shape != (rows,) or labels.is_floating_point() or labels.is_complex():
        raise bad(f"cache_labels {tuple(labels.shape)} {labels.dtype} must be {rows} integer labels, one per cache key")
    if rows and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise bad(f"cache_labels run from {int(labels.min())} to {int(labels.max())}, outside the {classes} classes")
    if any(tensors[k].shape[-2] != rows for k in ("cache_keys_corrected", *_VIEWS) if k in tensors):
        raise bad("its cache tensors hold different numbers of support images")
    nonfinite = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise bad(f"tensor(s) {', '.join(nonfinite)} hold NaN or infinite values")
    hparams = meta.get("hparams")
    need = HPARAMS[method.removesuffix("-imo")]
    if not isinstance(hparams, dict) or not all(isinstance(hparams.get(k), (int, float)) for k in need) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in hparams.values()):
        raise bad(f"hparams {hparams!r} are not the finite numbers {method} needs ({', '.join(need) or 'none'})")
    scale, bias = meta.get("logit_scale"), meta.get("logit_bias")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (scale, bias)) \
            or scale <= 0:
        raise bad(f"logit_scale {scale!r} and logit_bias {bias!r} must be finite numbers, the scale positive")
    try:
        MethodOptions(**(meta.get("options") or {}))
    except (TypeError, ValueError, ClipimoError) as err:
        raise bad(f"its method options {meta.get('options')!r} are not valid ({err})") from None


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Read a classifier file written by :meth:`Classifier.save` (``clipimo evaluate --save-classifier``)."""
    tensors, meta = fileio.read_safetensors(path, META_KEY, "classifier file")
    version = meta.get("version")
    if meta.get("format") != FORMAT or version not in (1, FORMAT_VERSION):
        raise ClipimoError(f"classifier file {path}: format {meta.get('format')!r} version {version!r}, "
                           f"expected {FORMAT!r} version {FORMAT_VERSION}")
    if version == 1 and meta.get("method") not in _V1_METHODS:
        raise ClipimoError(f"classifier file {path}: a {meta.get('method')} classifier from an older clipimo, which "
                           "did not record its method settings or correction; save it again with `clipimo evaluate "
                           "--save-classifier`")
    missing = [k for k in _TENSORS if k not in tensors]
    if missing:
        raise ClipimoError(f"classifier file {path}: missing tensor(s) {', '.join(missing)}")
    _check_parts(tensors, meta, path)
    correction = saved_map({k: tensors[k].numpy() for k in MAP_KEYS if k in tensors}, meta.get("correction"),
                           f"classifier file {path}")
    return Classifier(method=meta["method"], hparams=meta["hparams"], classnames=meta["classnames"],
                      backbone=meta["backbone"], adapter_sha256=meta["adapter_sha256"],
                      logit_scale=meta["logit_scale"], logit_bias=meta["logit_bias"],
                      provenance=meta.get("provenance", {}),
                      options=meta.get("options") or dataclasses.asdict(MethodOptions()),
                      correction=correction, trained_keys=bool(meta.get("trained_keys")),
                      head={k[len(_HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(_HEAD_PREFIX)},
                      source=meta.get("source") or {},
                      **{k: tensors[k] for k in _TENSORS + _VIEWS if k in tensors})


def _trained_head(feats: FeatureSet, method: str, options: MethodOptions, settings: Mapping[str, Any],
                  device: str | torch.device) -> dict[str, torch.Tensor]:
    """A linear probe's head, trained again as the evaluation did (deterministic on one device);
    LP++ must reach the evaluated epoch."""
    from . import clap, lpp

    base, corrected = method.removesuffix("-imo"), method.endswith("-imo")
    problem = Problem.from_features(feats, resolve_device(device))
    if base == "lp++":
        trained, epoch, _, _ = lpp.train(problem, corrected, options.seed)
        if "epoch" in settings and epoch + 1 != settings["epoch"]:
            raise ClipimoError(f"retraining {method} for the classifier chose epoch {epoch + 1}, the evaluation epoch "
                               f"{settings['epoch']}: save the classifier on the device the method was evaluated on")
        return {"weight": trained.weight.cpu(), "bias": trained.bias.cpu(), "alpha": trained.alpha.cpu()}
    prototypes, _ = clap.train(problem, corrected, base == "clap", options.seed, options.clap_batch)
    return {"prototypes": prototypes.cpu()}


def list_images(source: str | os.PathLike) -> list[str]:
    """Image paths from an image file, a folder (searched recursively, sorted) or a CSV with a 'path' column."""
    from ..data.generic import image_files, is_image_file

    source = Path(source)
    if source.is_dir():
        paths = image_files(source)[0]
    elif source.suffix.lower() == ".csv" and source.is_file():
        with io.StringIO(fileio.read_text_file(source, "image list"), newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ClipimoError(f"{source}: expected a CSV with a 'path' column, got columns {reader.fieldnames}")
            paths = [str((source.parent / row["path"]).resolve()) for row in reader if row["path"]]
    elif source.is_file() and is_image_file(source.name):
        paths = [str(source)]
    else:
        raise ClipimoError(f"{source}: expected an image file, a folder of images or a CSV with a 'path' column")
    if not paths:
        raise ClipimoError(f"{source}: no image files found")
    return paths


def predictions_text(predictions: list[dict[str, Any]], fmt: str) -> str:
    """Predictions as JSON, or CSV with columns path, label_1, probability_1, ..., label_k, probability_k."""
    if fmt == "json":
        return json.dumps(predictions, indent=2) + "\n"
    k = max((len(p["top_k"]) for p in predictions), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "probability")])
    for p in predictions:
        writer.writerow([p["path"]] + [x for t in p["top_k"] for x in (t["label"], f"{t['probability']:.6f}")])
    return buf.getvalue()


def best_method(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The method with the highest validation top-1 (ties: the first listed); methods without one
    (TDA) are left out."""
    scored = [m for m in results if results[m]["val_acc"] is not None]
    if not scored:
        raise ClipimoError(f"{', '.join(results)} select nothing on val, so none can be saved as a classifier")
    return max(scored, key=lambda m: results[m]["val_acc"])

