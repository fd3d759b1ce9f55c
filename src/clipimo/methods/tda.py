"""TDA (Karmanov et al., CVPR 2024): training-free test-time adaptation with two dynamic caches.

One pass over the test stream in a seeded order. Each image's zero-shot logits give its
pseudo-label, entropy and probability map; it may enter the positive cache of its pseudo-label
(capacity per class, lowest entropies kept) and, when its normalised entropy lies in a band, the
negative cache (with a mask of the classes whose probability lies in a band). Its prediction is
the zero-shot logits plus a positive cache vote ``a exp(-b (1 - k keys^T))`` per class minus the
negative one, with the caches as they stand after its own update (so an image that enters votes
for its own class). Entropy is in nats divided by ``log2 C``, the released code's units.

No support set, no training and no validation: val_acc is None. The cache decisions depend on
the zero-shot quantities only, so they are replayed first (a cheap scalar pass); the cache
logits are then computed for blocks of the stream at once, each entry counted for the images
that come between its entry and its replacement: the same sums as the one-image-at-a-time
definition. The IMO variant uses corrected features as cache keys and affinity queries; logits,
entropies, masks and pseudo-labels stay on the original features.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .common import CHUNK_ELEMENTS, MethodOptions, MethodResult, Problem, class_sums, zeroshot_logits
from .metrics import classification_metrics
from .official import TdaConfig, tda_config

QUERY_BLOCK = 256


@dataclass(frozen=True)
class Cache:
    """The entries of one cache over the stream: the stream position of each image that entered
    (ascending), the position where it was replaced (``n`` if never) and its pseudo-label."""

    members: torch.Tensor
    leave: torch.Tensor
    labels: torch.Tensor


def replay(pseudo: list[int], entropy: list[float], admit: list[bool], capacity: int, n: int) -> Cache:
    """Which stream positions enter one cache and when each is replaced: per class at most
    ``capacity`` entries kept sorted by entropy (stable); a full class admits a newcomer only
    when its entropy is strictly below the highest kept, which it replaces."""
    kept: dict[int, list[tuple[float, int]]] = {}
    members, leave = [], {}
    for j in range(n):
        if not admit[j]:
            continue
        c, item = pseudo[j], (entropy[j], j)
        slots = kept.setdefault(c, [])
        if len(slots) < capacity:
            slots.append(item)
        elif item[0] < slots[-1][0]:
            leave[slots[-1][1]] = j
            slots[-1] = item
        else:
            continue
        members.append(j)
        slots.sort(key=lambda s: s[0])
    index = torch.tensor(members, dtype=torch.long)
    return Cache(index, torch.tensor([leave.get(m, n) for m in members], dtype=torch.long),
                 torch.tensor([pseudo[m] for m in members], dtype=torch.long))


@dataclass(frozen=True)
class Stream:
    """The test set in stream order: zero-shot logits ``[n, C]``, cache-key features, labels and
    both caches' histories."""

    logits: torch.Tensor
    keys: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    positive: Cache | None
    negative: Cache | None


def build_stream(problem: Problem, corrected: bool, cfg: TdaConfig, seed: int) -> Stream:
    """Order the test set, compute the zero-shot quantities and replay both caches."""
    test = problem.test
    n, num_classes = test.labels.shape[0], problem.num_classes
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(test.labels.device)
    z = zeroshot_logits(problem, test.feats[order])
    probs = torch.softmax(z, 1)
    entropy = -(probs * torch.log_softmax(z, 1)).sum(1)
    h = (entropy / math.log2(num_classes)).tolist()
    pseudo, ent = z.argmax(1).tolist(), entropy.tolist()
    positive = negative = None
    if cfg.pos_enabled:
        positive = replay(pseudo, ent, [True] * n, cfg.pos_capacity, n)
    if cfg.neg_enabled:
        lo, hi = cfg.entropy_band
        negative = replay(pseudo, ent, [lo < x < hi for x in h], cfg.neg_capacity, n)
    return Stream(z, test.query(corrected)[order], test.labels[order], probs, positive, negative)


def _affinity_terms(stream: Stream, cache: Cache, rows: slice, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(-(b - b A))`` of the block's queries with the entries alive for each (0 elsewhere),
    and those entries' positions."""
    device = stream.keys.device
    members, leave = cache.members.to(device), cache.leave.to(device)
    live = (members < rows.stop) & (leave > rows.start)
    entries = members[live]
    t = torch.arange(rows.start, rows.stop, device=device)[:, None]
    alive = (entries[None, :] <= t) & (t < leave[live][None, :])
    affinity = stream.keys[rows] @ stream.keys[entries].T
    return torch.exp(-(beta - beta * affinity)) * alive, live


def stream_logits(stream: Stream, cfg: TdaConfig, block: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, final logits)`` blocks in stream order."""
    n, num_classes = stream.logits.shape
    width = num_classes * (cfg.pos_capacity + cfg.neg_capacity)
    block = block or max(1, min(QUERY_BLOCK, CHUNK_ELEMENTS // max(width, 1)))
    lo, hi = cfg.mask_band
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        out = stream.logits[rows].clone()
        if stream.positive is not None and len(stream.positive.members):
            values, live = _affinity_terms(stream, stream.positive, rows, cfg.pos_beta)
            out = out + cfg.pos_alpha * class_sums(values, stream.positive.labels.to(out.device)[live], num_classes)
        if stream.negative is not None and len(stream.negative.members):
            values, live = _affinity_terms(stream, stream.negative, rows, cfg.neg_beta)
            p = stream.probs[stream.negative.members.to(out.device)[live]]
            out = out - cfg.neg_alpha * (values @ ((p > lo) & (p < hi)).to(values.dtype))
        yield rows, out


def run(problem: Problem, corrected: bool = False, options: MethodOptions | None = None) -> MethodResult:
    """One pass over the seeded test stream; val_acc None, hparams ``{}``, the configuration, the
    order seed and how many images entered each cache in ``meta``."""
    opts = options or MethodOptions()
    cfg = tda_config(opts)
    stream = build_stream(problem, corrected, cfg, opts.seed)
    test = classification_metrics(stream_logits(stream, cfg), stream.labels)
    meta = {"config": cfg.name, **cfg.settings(), "order_seed": opts.seed,
            "positive_entered": 0 if stream.positive is None else len(stream.positive.members),
            "negative_entered": 0 if stream.negative is None else len(stream.negative.members),
            "shared_across_shots": True}
    return MethodResult(val_acc=None, test_acc=test["top1"], hparams={}, meta=meta, test_top5=test["top5"],
                        test_mean_per_class_recall=test["mean_per_class_recall"])
