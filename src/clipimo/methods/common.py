"""What every method shares: the features as device tensors, query chunking and the result type."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ClipimoError
from ..features.file import VIEW_KEYS, FeatureSet

# Elements of one [queries, cache] matrix held at once: chunk rows are chosen so the big
# intermediates (affinities, their exponentials, KL) stay near 4 * 2**25 bytes each.
CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class Split:
    """One query split: original and corrected features ``[n, D]`` and labels ``[n]``."""

    feats: torch.Tensor
    feats_corrected: torch.Tensor
    labels: torch.Tensor

    def query(self, corrected: bool) -> torch.Tensor:
        return self.feats_corrected if corrected else self.feats


@dataclass(frozen=True)
class Problem:
    """A few-shot task on one device: text weights ``[D, C]``, cache keys ``[N, D]`` and their labels."""

    text_weights: torch.Tensor
    cache_keys: torch.Tensor
    cache_keys_corrected: torch.Tensor
    cache_labels: torch.Tensor
    val: Split
    test: Split
    cache_views: torch.Tensor | None = None
    cache_views_corrected: torch.Tensor | None = None
    logit_scale: float = 100.0
    logit_bias: float = 0.0
    text_norms: torch.Tensor | None = None

    @classmethod
    def from_features(cls, feats: FeatureSet, device: str | torch.device = "cpu") -> "Problem":
        def t(a):  # float32 features on every device
            return torch.from_numpy(a).to(device, torch.float32 if a.dtype.kind == "f" else None)

        labels = t(feats.cache_labels)
        return cls(
            text_weights=t(feats.text_weights),
            cache_keys=t(feats.cache_keys),
            cache_keys_corrected=t(feats.cache_keys_corrected),
            cache_labels=labels,
            val=Split(t(feats.val_feats), t(feats.val_feats_corrected), t(feats.val_labels)),
            test=Split(t(feats.test_feats), t(feats.test_feats_corrected), t(feats.test_labels)),
            cache_views=None if feats.cache_views is None else t(feats.cache_views),
            cache_views_corrected=None if feats.cache_views_corrected is None else t(feats.cache_views_corrected),
            logit_scale=feats.logit_scale,
            logit_bias=feats.logit_bias,
            text_norms=None if feats.text_norms is None else t(feats.text_norms),
        )

    @property
    def num_classes(self) -> int:
        return self.text_weights.shape[1]

    def keys(self, corrected: bool) -> torch.Tensor:
        return self.cache_keys_corrected if corrected else self.cache_keys

    def views(self, corrected: bool, method: str) -> torch.Tensor:
        """The ``[E, N, D]`` per-pass support features; ``method`` names who needs them in the error."""
        views = self.cache_views_corrected if corrected else self.cache_views
        if views is None:
            raise ClipimoError(f"{method} fits on every augmented view of the support set, but these features "
                               f"have no {' / '.join(VIEW_KEYS)} [E, N, D]; write a features file that has them "
                               "with `clipimo run --save-features` (one file per cell) and evaluate that")
        return views


@dataclass(frozen=True)
class MethodResult:
    """Top-1 accuracies in percent, the chosen hyper-parameters (empty for zero-shot) and, in
    ``meta``, the non-searched settings that determined the result (views mode, channels, ...)."""

    val_acc: float | None            # None: the method selects nothing on val (TDA)
    test_acc: float
    hparams: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    test_top5: float | None = None                   # scored at the chosen point, after the search
    test_mean_per_class_recall: float | None = None

    def as_dict(self) -> dict:
        """The result record, plus top-5 and mean per-class recall when scored (``meta`` is reported
        beside it, as the run's cell ``settings``)."""
        extra = {k: getattr(self, k) for k in ("test_top5", "test_mean_per_class_recall") if getattr(self, k) is not None}
        return {"test_acc": self.test_acc, "val_acc": self.val_acc, "hparams": dict(self.hparams), **extra}


@dataclass(frozen=True)
class MethodOptions:
    """Settings of the methods beyond the paper (docs/methods.md): the seed (Tip-F's and ZS-LP/CLAP's minibatch
    orders, LP++'s bias draw, TDA's stream order), Tip-F's and ZS-LP/CLAP's batch, Tip-F's
    configuration, ProKeR's views mode and grid, APE's and TDA's configuration; ``default`` is
    clipimo's one setting for every task, ``official`` the released per-dataset values, looked up by
    ``dataset`` (:mod:`clipimo.methods.official`)."""

    seed: int = 1
    tipf_batch: int = 256
    proker_views: str = "auto"
    proker_grid: str = "default"
    ape_config: str = "default"
    tipf_config: str = "default"
    clap_batch: int = 256
    tda_config: str = "default"   # default, official or a YAML file
    dataset: str | None = None

    def __post_init__(self) -> None:
        for flag, batch in (("--tipf-batch", self.tipf_batch), ("--clap-batch", self.clap_batch)):
            if batch < 1:
                raise ClipimoError(f"{flag} must be >= 1, got {batch}")
        if self.proker_views not in ("auto", "all", "mean"):
            raise ClipimoError(f"--proker-views must be auto, all or mean, got {self.proker_views!r}")
        for flag, value in (("--proker-grid", self.proker_grid), ("--ape-config", self.ape_config),
                            ("--tipf-config", self.tipf_config)):
            if value not in ("default", "official"):
                raise ClipimoError(f"{flag} must be default or official, got {value!r}")


def chunks(n: int, width: int, chunk_rows: int | None = None) -> Iterator[slice]:
    """Row slices covering ``range(n)``; by default sized so ``rows * width <= CHUNK_ELEMENTS``."""
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def class_sums(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``values @ one_hot(labels)`` without the product: ``[rows, N]`` -> ``[rows, C]`` segment sums
    (:func:`class_summer`'s function, for one call)."""
    return class_summer(labels, num_classes)(values)


def class_summer(labels: torch.Tensor, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``values -> values @ one_hot(labels)``, with the layout decided once (callers
    that sum many matrices over the same keys, as Tip-F's training steps, build it once).

    A reshape-and-sum when the columns come as ``k`` keys of class 0, then ``k`` of class 1, ...;
    otherwise a gather of each class's columns, padded with zeros to the largest class, and the
    same sum (deterministic on every device, unlike atomic ``index_add``). About ``C`` times less
    work than the one-hot product; ``labels`` need not be sorted, classes may be empty, and it is
    differentiable in ``values`` (Tip-F trains through it).
    """
    width = labels.shape[0]
    k = width // num_classes if num_classes else 0
    if k * num_classes == width and k > 0 and bool((labels == _grouped(num_classes, k, labels.device)).all()):
        return lambda values: values.reshape(values.shape[0], num_classes, k).sum(-1)
    slots = class_slots(labels, num_classes)

    def gathered(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, values.new_zeros(values.shape[0], 1)], 1)[:, slots].sum(-1)

    return gathered


def class_slots(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, kmax]`` key indices per class in cache order, padded with ``N``: any cache order and
    any number of shots per class (an empty class is all padding)."""
    n = labels.shape[0]
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    slot = torch.arange(n, device=labels.device) - (torch.cumsum(counts, 0) - counts)[labels[order]]
    index = torch.full((num_classes, max(int(counts.max()), 1) if n else 1), n, dtype=torch.long, device=labels.device)
    index[labels[order], slot] = order
    return index


def _grouped(num_classes: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.arange(num_classes, device=device).repeat_interleave(k)


def zeroshot_logits(problem: Problem, feats: torch.Tensor) -> torch.Tensor:
    """``Z = s f W + b`` on ORIGINAL features (every method keeps this term); CLIP: s = 100, b = 0."""
    z = problem.logit_scale * (feats @ problem.text_weights)
    return z + problem.logit_bias if problem.logit_bias else z


def count_hits(logit_chunks: Iterable[tuple[slice, torch.Tensor]], labels: torch.Tensor,
               classes: Sequence[int] | None = None) -> int:
    """Top-1 hits over ``(rows, logits)`` chunks (argmax ties to the lowest class). With ``classes``
    the logits are restricted to those columns and ``labels`` index into ``classes``."""
    cols = None if classes is None else torch.as_tensor(list(classes), device=labels.device)
    hits = 0
    for rows, logits in logit_chunks:
        if cols is not None:
            logits = logits[:, cols]
        hits += int((logits.argmax(1) == labels[rows]).sum())
    return hits


def percent(hits: int, n: int) -> float:
    return 100.0 * hits / n
