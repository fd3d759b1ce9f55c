"""Both feature streams (original, corrected) in one pass over the images, with an on-disk cache.

Work is split into shards of images; each shard's features are cached under a key built from
everything that determines them (backbone weights identity, adapter file hash, transform,
augmentation passes and seed, precision, the image list with each file's size, mtime, ctime and
inode). Augmented crops are seeded by each image's bytes, so they do not depend on where the
dataset lies. Augmented features keep their E per-pass views next to the averaged ones, so methods
that fit on every view never re-encode. A repeated call encodes nothing; a killed run resumes at the
first unfinished shard. Cache files are written atomically, so an interrupted write never leaves a
file that loads as valid.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.images import load_rgb
from ..data.items import LabelledImage
from ..data.templates import format_prompts
from ..data.transforms import cache_augmentation, seeded_transform
from ..defaults import DEFAULT_SHARD_SIZE, MAX_PASSES
from ..errors import ClipimoError
from ..model.adapter import adapter_state, adapters_enabled, apply_adapter, has_adapters, read_adapter
from ..model.backbone import Backbone
from ..model.hub import is_hub_ref, resolve_adapter
from ..utils import fileio
from ..utils.distributed import DistEnv, run_sharded
from ..utils.log import duration, logger, tqdm_disable

# 2: shards of augmented features hold the per-pass views; 3: 16-bit and float images decoded with correct scaling;
# 4: augmentation seeded by each image's content instead of its path
FEATURE_FORMAT_VERSION = 4


def default_cache_dir() -> Path:
    """``$CLIPIMO_CACHE`` or ``~/.cache/clipimo``."""
    return Path(os.environ.get("CLIPIMO_CACHE", Path.home() / ".cache" / "clipimo"))


def _item_seed(seed: int, pass_index: int, content: bytes) -> int:
    """Augmentation seed of one image in one pass, from the file's bytes: independent of batching,
    sharding and workers, and of where the dataset lies, so a moved or copied dataset gives the
    same crops (the path would tie every number to one folder)."""
    blob = hashlib.sha256(f"{seed}:{pass_index}:".encode() + hashlib.sha256(content).digest()).digest()
    return int.from_bytes(blob[:8], "little") & ((1 << 63) - 1)


@dataclass
class ImageFeatures:
    """L2-normalised features of a list of images; ``corrected`` is None without an adapter.

    With E augmentation passes, ``views``/``views_corrected`` ``[E, N, D]`` hold each pass's
    feature, L2-normalised; ``original``/``corrected`` are the normalised sums of the unnormalised
    passes. Without passes (eval transform) the views are None.
    """

    original: torch.Tensor
    corrected: torch.Tensor | None
    labels: torch.Tensor
    paths: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    views: torch.Tensor | None = None
    views_corrected: torch.Tensor | None = None

    @property
    def corrected_or_original(self) -> torch.Tensor:
        """The corrected stream, or the original one where no adapter was used (both streams then agree)."""
        return self.original if self.corrected is None else self.corrected

    @property
    def views_corrected_or_original(self) -> torch.Tensor | None:
        return self.views if self.views_corrected is None else self.views_corrected


class _Images(Dataset):
    def __init__(self, items: Sequence[LabelledImage], transform, size: int, seed: int | None, pass_index: int):
        self.items, self.transform, self.size = items, transform, size
        self.seed, self.pass_index = seed, pass_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path = self.items[i][0]
        try:  # PIL raises many types for broken files (some only inside the transform); report them all alike
            if self.seed is None:
                return self.transform(load_rgb(path)), True, ""
            data = Path(path).read_bytes()
            seed = _item_seed(self.seed, self.pass_index, data)
            return seeded_transform(self.transform, load_rgb(path, data), seed), True, ""
        except Exception as err:
            return torch.zeros(3, self.size, self.size), False, f"{type(err).__name__}: {err}"


def check_sizes(batch_size: int, shard_size: int, num_workers: int | None) -> None:
    """The extractor's sizes as one ClipimoError each (``--shard-size -1`` would encode nothing)."""
    sizes = (("batch_size (--batch-size)", batch_size, 1), ("shard_size (--shard-size)", shard_size, 1),
             ("num_workers (--workers)", num_workers, 0))
    for name, value, least in sizes:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ClipimoError(f"{name} must be an integer >= {least}, got {value!r}")


class FeatureExtractor:
    """Encodes labelled images with a backbone (and optionally an adapter file) into both streams."""

    def __init__(
        self,
        backbone: Backbone,
        adapter: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        precision: str = "fp32",
        progress: bool | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        strict_backbone: bool = True,
        env: DistEnv | None = None,
    ):
        """``precision``: "fp32" (the paper) or "bf16" (autocast); ``strict_backbone=False`` accepts an adapter
        file trained on another backbone identity (e.g. the same weights given as a tag and as a file);
        ``env``: under torchrun, the cache shards are split across ranks (see ``run_sharded``)."""
        check_sizes(batch_size, shard_size, num_workers)
        self.backbone = backbone
        self.adapter_hash: str | None = None
        self.adapter_source = None if adapter is None else (str(adapter) if is_hub_ref(adapter)
                                                            else str(Path(adapter).expanduser().resolve()))
        adapter = None if adapter is None else resolve_adapter(adapter)
        self.adapter_path = None if adapter is None else Path(adapter).resolve()
        if adapter is not None:
            loaded = read_adapter(adapter)  # one read: the hash keys the cache by the bytes loaded
            apply_adapter(backbone.model, loaded, strict_backbone=strict_backbone)
            self.adapter_hash = loaded.sha256
        elif has_adapters(backbone.model):
            raise ClipimoError("the backbone already carries adapters: pass the adapter file instead, so it can be hashed")
        self._adapter_state = self._current_adapter_state()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        if precision not in ("fp32", "bf16"):
            raise ClipimoError(f"precision must be fp32 or bf16, got {precision!r}")
        self.amp = precision == "bf16"
        self.progress = progress
        self.shard_size = shard_size
        self.env = env or DistEnv(device=backbone.device)
        self.encoded_images = 0
        self._warned_text: set[str] = set()

    @property
    def source(self) -> dict[str, str | None]:
        """How to build this extractor's model again (model, pretrained, adapter as given; files
        absolute), recorded next to the identity and hashes that check it."""
        return {**self.backbone.source, "adapter": self.adapter_source}

    def _current_adapter_state(self) -> str | None:
        """Digest of the adapter tensors now in the model: cached features are only valid for the
        adapter this extractor was built with."""
        if not has_adapters(self.backbone.model):
            return None
        digest = hashlib.sha256()
        for name, t in sorted(adapter_state(self.backbone.model).items()):
            digest.update(name.encode())
            digest.update(t.float().numpy().tobytes())
        return digest.hexdigest()

    @property
    def precision(self) -> str:
        return "bf16-autocast" if self.amp else "fp32"

    def _autocast(self):
        if self.amp:
            return torch.autocast(self.backbone.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _key(self, kind: str, payload: dict[str, Any], adapter_dependent: bool = True) -> str:
        record = {
            "format": FEATURE_FORMAT_VERSION,
            "kind": kind,
            "backbone": self.backbone.identity,
            "adapter": self.adapter_hash if adapter_dependent else None,
            "precision": self.precision,
            **payload,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def _cache_file(self, key: str) -> Path:
        return self.cache_dir / "features" / key[:2] / f"{key}.safetensors"

    # ---- images -----------------------------------------------------------------------------

    def image_features(
        self,
        items: Sequence[LabelledImage],
        passes: int = 0,
        seed: int = 0,
        skip_unreadable: bool = False,
        desc: str = "images",
    ) -> ImageFeatures:
        """Features of ``items``: ``passes=0`` uses the eval transform; ``passes=E`` averages E augmented
        views and keeps each of them (``ImageFeatures.views``).

        Unreadable images raise a ClipimoError that lists them, unless ``skip_unreadable`` is set:
        then they are left out and reported in ``ImageFeatures.skipped``.
        """
        if not 0 <= passes <= MAX_PASSES:
            raise ClipimoError(f"passes must be from 0 to {MAX_PASSES} (each keeps a view of every image), got {passes}")
        if not items:
            raise ValueError("image_features needs at least one image")
        missing = [it[0] for it in items if not os.path.isfile(it[0])]
        if missing and not skip_unreadable:
            listed = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ClipimoError(f"{len(missing)} image file(s) do not exist:\n  {listed}\n(pass --skip-unreadable to leave them out)")
        bb = self.backbone
        transform = bb.preprocess if passes == 0 else cache_augmentation(bb.image_size, bb.mean, bb.std)
        shards = [items[start : start + self.shard_size] for start in range(0, len(items), self.shard_size)]
        bar = tqdm(total=len(shards), desc=f"{desc} shards", leave=False,
                   disable=True if len(shards) < 2 or not self.env.is_main else tqdm_disable(self.progress))

        def shard(i: int) -> ImageFeatures:
            feats = self._shard(shards[i], transform, passes, seed, skip_unreadable, desc)
            bar.update()
            return feats

        began, encoded = time.perf_counter(), self.encoded_images
        parts = run_sharded(len(shards), shard, self.env)
        bar.close()
        feats = _concat(parts)
        if not feats.paths:
            first, why = next(iter(feats.skipped.items()))
            raise ClipimoError(f"{desc}: all {len(items)} image(s) are unreadable, e.g. {first} ({why}); "
                               "--skip-unreadable leaves nothing to encode")
        if self.env.is_main:  # one line per image list, so a log file shows the encoding's progress
            how = (f"encoded in {duration(time.perf_counter() - began)}" if self.encoded_images > encoded
                   else "read from the feature cache")
            views = f" x {passes} views" if passes else ""
            logger.info(f"{desc}: {len(feats.paths)} images{views} {how}")
        return feats

    def _shard(self, items, transform, passes, seed, skip_unreadable, desc) -> ImageFeatures:
        listing = [f"{os.path.abspath(path)}\t{int(label)}\t{fileio.file_stamp(path)}" for path, label in items]
        key = self._key(
            "images",
            {
                "transform": repr(transform),
                "passes": passes,
                "seed": seed if passes else None,
                "skip_unreadable": skip_unreadable,
                "items": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
            },
        )
        path = self._cache_file(key)
        if path.is_file():
            return _read_shard(path)
        feats = self._encode(items, transform, passes, seed, skip_unreadable, desc)
        _write_shard(path, feats)
        return feats

    def _encode(self, items, transform, passes, seed, skip_unreadable, desc) -> ImageFeatures:
        if self._current_adapter_state() != self._adapter_state:
            raise ClipimoError(
                "the backbone's adapters changed after this FeatureExtractor was made (another extractor or "
                "load_adapters touched the same model): make a new extractor with its own backbone"
            )
        per_pass, failed = self._encode_passes(items, transform, passes, seed, desc,
                                               stop_on_failure=not skip_unreadable)
        if failed and not skip_unreadable:
            listed = "\n  ".join(f"{items[i][0]} ({msg})" for i, msg in sorted(failed.items()))
            raise ClipimoError(
                f"{len(failed)} image(s) could not be read:\n  {listed}\n(pass --skip-unreadable to leave them out)"
            )
        return _assemble(items, per_pass, failed, passes, desc)

    def _encode_passes(self, items, transform, passes, seed, desc,
                       stop_on_failure: bool) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """Unnormalised features [passes, n, D] of each stream (original, then corrected when an adapter
        is loaded; ``None`` for a stream not computed), and the unreadable images by index
        (``stop_on_failure``: after the first pass that met one, as the error ends the work)."""
        model, device = self.backbone.model, self.backbone.device
        streams = [False, True] if self.adapter_hash is not None else [None]
        n = len(items)
        per_pass: list[torch.Tensor | None] = [None, None]
        failed: dict[int, str] = {}
        model.eval()
        for p in range(max(passes, 1)):
            data = _Images(items, transform, self.backbone.image_size, seed if passes else None, p)
            loader = DataLoader(
                data,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
            label = f"{desc} pass {p + 1}/{passes}" if passes else desc
            row = 0
            with torch.inference_mode(), self._autocast():
                for x, ok, err in tqdm(loader, desc=label, disable=tqdm_disable(self.progress), leave=False):
                    x = x.to(device, non_blocking=True)
                    for s, on in enumerate(streams):
                        ctx = adapters_enabled(model, on) if on is not None else contextlib.nullcontext()
                        with ctx:
                            f = model.encode_image(x).float().cpu()
                        if per_pass[s] is None:
                            per_pass[s] = torch.zeros(max(passes, 1), n, f.shape[1])
                        per_pass[s][p, row : row + len(f)] = f
                    for j in torch.nonzero(~ok).flatten().tolist():
                        failed[row + j] = err[j]
                    row += len(x)
                    self.encoded_images += len(x)
            if failed and stop_on_failure:
                break
        return per_pass, failed

    # ---- text -------------------------------------------------------------------------------

    def text_weights(self, classnames: Sequence[str], templates: Sequence[str], chunk: int = 64) -> torch.Tensor:
        """Zero-shot classifier W [D, C]: per class, encode each template, normalise, average, normalise."""
        return self.text_features(classnames, templates, chunk)["text_weights"]

    def text_features(self, classnames: Sequence[str], templates: Sequence[str],
                      chunk: int = 64) -> dict[str, torch.Tensor]:
        """``text_weights`` [D, C] and ``text_norms`` [C] from one encoding (or one cache read): the
        norms are those of each class's mean of the UNnormalised template embeddings, the raw text
        prototypes that ZS-LP and CLAP start from."""
        if not classnames or not templates:
            raise ValueError("text_weights needs at least one class name and one template")
        payload = {"classnames": list(classnames), "templates": list(templates)}
        key = self._key("text", payload, adapter_dependent=False)
        path = self._cache_file(key)
        if path.is_file():
            text = fileio.read_safetensors(path, "clipimo", "text-feature cache file")[0]
            if "text_norms" not in text:  # older cache files hold the weights only: encode again
                text = None
        else:
            text = None
        if text is None:
            text = self._encode_text(classnames, templates, chunk)
            fileio.write_safetensors(path, text, "clipimo", payload)
        if key not in self._warned_text:
            self._warned_text.add(key)
            warn_identical_classes(classnames, templates, text["text_weights"])
        return text

    def _encode_text(self, classnames: Sequence[str], templates: Sequence[str], chunk: int) -> dict[str, torch.Tensor]:
        model, device, tok = self.backbone.model, self.backbone.device, self.backbone.tokenizer
        rows, norms = [], []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(classnames), chunk):
                names = classnames[i : i + chunk]
                tokens = tok([p for c in names for p in format_prompts(templates, c)]).to(device)
                raw = model.encode_text(tokens).float().view(len(names), len(templates), -1)
                norms.append(raw.mean(dim=1).norm(dim=-1).cpu())
                rows.append(F.normalize(F.normalize(raw, dim=-1).mean(dim=1), dim=-1).cpu())
        return {"text_weights": torch.cat(rows).T.contiguous(), "text_norms": torch.cat(norms)}


def warn_identical_classes(classnames: Sequence[str], templates: Sequence[str], weights: torch.Tensor) -> None:
    """Warn when two classes get the same prompts or the same text weights: zero-shot and every method
    using the text classifier cannot tell them apart."""
    seen: dict[Any, str] = {}
    pairs = []
    for c, name in enumerate(classnames):
        key = (tuple(format_prompts(templates, name)),)
        column = weights[:, c].numpy().tobytes()
        for k in (key, column):
            if k in seen:
                pairs.append(f"{seen[k]!r} and {name!r}")
                break
        seen.setdefault(key, name)
        seen.setdefault(column, name)
    if pairs:
        logger.warning("%d pair(s) of classes have identical text weights (the same prompts), so the text "
                       "classifier cannot tell them apart: %s%s", len(pairs), ", ".join(pairs[:5]),
                       " ..." if len(pairs) > 5 else "")


def _write_shard(path: Path, feats: ImageFeatures) -> None:
    tensors = {"original": feats.original, "labels": feats.labels}
    for name in ("corrected", "views", "views_corrected"):
        if getattr(feats, name) is not None:
            tensors[name] = getattr(feats, name)
    fileio.write_safetensors(path, tensors, "clipimo", {"paths": feats.paths, "skipped": feats.skipped})


def _read_shard(path: Path) -> ImageFeatures:
    tensors, meta = fileio.read_safetensors(path, "clipimo", "feature cache file")
    return ImageFeatures(
        original=tensors["original"],
        corrected=tensors.get("corrected"),
        labels=tensors["labels"],
        paths=meta["paths"],
        skipped=meta["skipped"],
        views=tensors.get("views"),
        views_corrected=tensors.get("views_corrected"),
    )


def _concat(parts: list[ImageFeatures]) -> ImageFeatures:
    if len(parts) == 1:
        return parts[0]
    def cat(name: str, dim: int = 0) -> torch.Tensor | None:
        if getattr(parts[0], name) is None:
            return None
        return torch.cat([getattr(p, name) for p in parts], dim=dim)

    return ImageFeatures(
        original=cat("original"),
        corrected=cat("corrected"),
        views=cat("views", 1),
        views_corrected=cat("views_corrected", 1),
        labels=torch.cat([p.labels for p in parts]),
        paths=[x for p in parts for x in p.paths],
        skipped={k: v for p in parts for k, v in p.skipped.items()},
    )


def _assemble(items, per_pass: list[torch.Tensor | None], failed: dict[int, str], passes: int,
              desc: str) -> ImageFeatures:
    """The readable images' features: each stream's keys (normalised sum of its passes) and views
    (each pass normalised, only when passes were asked for); non-finite features are an error."""
    n = len(items)
    keep = torch.tensor([i not in failed for i in range(n)], dtype=torch.bool)
    bad = sorted({i for t in per_pass if t is not None
                  for i in torch.nonzero(~torch.isfinite(t).all(2).all(0)).flatten().tolist()} - set(failed))
    if bad:
        listed = "\n  ".join(items[i][0] for i in bad[:20])
        raise ClipimoError(f"{desc}: the model gave NaN or infinite features for {len(bad)} image(s) (nothing was "
                           f"written; check the weights, adapter and --precision):\n  {listed}")
    original, corrected = (None if t is None else F.normalize(t[:, keep].sum(0), dim=-1) for t in per_pass)
    views, views_corrected = (None if t is None or not passes else F.normalize(t[:, keep], dim=-1)
                              for t in per_pass)
    return ImageFeatures(
        original=original,
        corrected=corrected,
        views=views,
        views_corrected=views_corrected,
        labels=torch.tensor([int(it[1]) for it in items], dtype=torch.int64)[keep],
        paths=[it[0] for i, it in enumerate(items) if i not in failed],
        skipped={items[i][0]: msg for i, msg in sorted(failed.items())},
    )
