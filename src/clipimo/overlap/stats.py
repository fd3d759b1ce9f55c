"""Intra-modal overlap diagnostics (docs/methods.md, "Overlap diagnostics"): pure functions on labelled feature arrays.

For a labelled set of image features, the cosine similarity of every unordered pair ``i < j``
(self-pairs excluded) is split into *paired* (same class) and *unpaired* (different class) and
counted on a fine fixed grid over ``[-1, 1]`` (``FINE_BINS``). The densities are then read on
bins over the data's range, whole groups of fine bins from the lowest to the highest occupied one
(of every stream compared, so both streams share their bins), their count chosen from the number
of pairs (``choose_bins``). From the two densities of a stream:

- overlap       = sum_b min(p_b, q_b) * width   (area of the intersection; 1 = identical, 0 = disjoint)
- Bhattacharyya = sum_b sqrt(p_b q_b) * width   (1 = identical, 0 = disjoint)

Both are estimates that need many pairs: two samples of one distribution, ``n_p`` and ``n_u``
pairs on ``k`` bins, read an overlap of about ``1 - sqrt(k (1/n_p + 1/n_u) / (2 pi))`` (each bin's
count difference is about normal; ``overlap_noise``), so a change smaller than that is noise.

The exact computation walks the upper triangle of the similarity matrix in row chunks, so memory
stays ``O(chunk x N)`` however large the split; for very large splits a seeded uniform sample of
pairs can be used instead, and the record says so (and how many pairs were drawn).

Feature variance is the mean over dimensions of the per-dimension (population) variance of the
L2-normalised features; for unit vectors it equals ``(1 - ||mean||^2) / D``.

Bin assignment follows ``numpy.histogram`` on ``range=(-1, 1)``: bins are half-open ``[a, b)``
except the last, which is closed. Similarities are clipped into ``[-1, 1]`` first, so floating
point excursions like ``1 + 1e-7`` of a duplicate image land in the end bins instead of vanishing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..defaults import AUTO_BINS_RANGE

SIM_RANGE = (-1.0, 1.0)
FINE_BINS = 4000  # the counting grid: width 0.0005, far below any bin the densities are read on
# Elements of one chunk's similarity block (rows x columns): 2M float64 values = 16 MB (peak ~4x).
DEFAULT_CHUNK_ELEMENTS = 1 << 21


def bin_edges(bins: int = FINE_BINS) -> np.ndarray:
    """The ``bins + 1`` fixed, equally spaced edges over ``[-1, 1]``."""
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return np.linspace(SIM_RANGE[0], SIM_RANGE[1], int(bins) + 1)


def bin_indices(values: np.ndarray, bins: int = FINE_BINS) -> np.ndarray:
    """Bin index of each value on the fixed bins, consistent with ``np.histogram(range=(-1, 1))``.

    Values outside ``[-1, 1]`` (NaN excluded) are clipped into the end bins.
    """
    edges = bin_edges(bins)
    v = np.clip(np.asarray(values, dtype=np.float64), SIM_RANGE[0], SIM_RANGE[1])
    idx = ((v - SIM_RANGE[0]) * (bins / (SIM_RANGE[1] - SIM_RANGE[0]))).astype(np.intp)
    np.clip(idx, 0, bins - 1, out=idx)
    # The scaled index can be one off within an ulp of an edge: fix it against the edges themselves.
    idx[v < edges[idx]] -= 1
    up = (v >= edges[idx + 1]) & (idx != bins - 1)
    idx[up] += 1
    return idx


def auto_bins(n_pairs: int) -> int:
    """A bin count for a group of ``n_pairs`` similarities over its range: the Rice rule
    (``2 n^(1/3)``), kept within ``AUTO_BINS_RANGE``. Few pairs get wide bins (a smooth density,
    not isolated spikes), many pairs fine ones."""
    rice = math.ceil(2 * max(int(n_pairs), 1) ** (1 / 3))
    return int(min(max(rice, AUTO_BINS_RANGE[0]), AUTO_BINS_RANGE[1]))


@dataclass(frozen=True)
class Bins:
    """``count`` bins of ``step`` fine bins each, the first starting at fine bin ``first``."""

    first: int
    step: int
    count: int
    rule: str  # how the count was chosen

    @property
    def width(self) -> float:
        return self.step * (SIM_RANGE[1] - SIM_RANGE[0]) / FINE_BINS

    @property
    def edges(self) -> np.ndarray:
        return SIM_RANGE[0] + (self.first + self.step * np.arange(self.count + 1)) * (
            (SIM_RANGE[1] - SIM_RANGE[0]) / FINE_BINS)

    def counts(self, fine: np.ndarray) -> np.ndarray:
        """Fine-grid counts summed into these bins."""
        return np.asarray(fine[self.first:self.first + self.step * self.count], dtype=np.int64).reshape(
            self.count, self.step).sum(axis=1)

    def record(self) -> dict[str, Any]:
        lo, hi = self.edges[[0, -1]]
        return {"count": self.count, "low": float(lo), "high": float(hi), "width": self.width, "rule": self.rule}


def choose_bins(hists: Any, bins: int | str = "auto") -> Bins:
    """Bins over the data's range: from the lowest to the highest fine bin any of ``hists`` (the
    streams compared) occupies; ``bins`` of them, or with ``"auto"`` :func:`auto_bins` of the
    smaller of the paired/unpaired groups (the group that limits the estimate)."""
    hists = list(hists)
    if any(h.bins != FINE_BINS for h in hists):
        raise ValueError(f"densities are read from histograms on the {FINE_BINS}-bin counting grid")
    occupied = np.nonzero(np.any([h.paired + h.unpaired > 0 for h in hists], axis=0))[0]
    lo, hi = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, FINE_BINS - 1)
    smaller = min(min(h.n_paired, h.n_unpaired) or max(h.n_paired, h.n_unpaired) for h in hists)
    if str(bins).strip().lower() == "auto":
        count, rule = auto_bins(smaller), f"auto: Rice rule on {smaller:,} pairs"
    else:
        count, rule = int(bins), "fixed"
        if count < 1 or count != bins:
            raise ValueError(f"bins must be a positive integer or 'auto', got {bins!r}")
    if count > FINE_BINS:
        raise ValueError(f"bins must be at most {FINE_BINS}, got {count}")
    span = hi - lo + 1
    step = math.ceil(span / count)  # whole fine bins: exactly ``count`` bins, the range centred in them
    first = min(max(lo - (step * count - span) // 2, 0), FINE_BINS - step * count)
    return Bins(first, step, count, rule)


def histogram(values: np.ndarray, bins: int = FINE_BINS) -> np.ndarray:
    """Counts of ``values`` on the fixed bins over ``[-1, 1]`` (clipped, see module doc)."""
    return np.bincount(bin_indices(np.ravel(values), bins), minlength=bins).astype(np.int64)


def density(counts: np.ndarray, width: float | None = None) -> np.ndarray:
    """Probability density of a histogram (integrates to 1; zeros if empty); bins of ``width``,
    by default the fixed bins over ``[-1, 1]``."""
    counts = np.asarray(counts, dtype=np.float64)
    width = width or (SIM_RANGE[1] - SIM_RANGE[0]) / len(counts)
    total = counts.sum()
    if total <= 0:
        return np.zeros_like(counts)
    return counts / (total * width)


def _check_densities(p: np.ndarray, q: np.ndarray, width: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"densities must be 1-D arrays of equal length, got {p.shape} and {q.shape}")
    return p, q, width or (SIM_RANGE[1] - SIM_RANGE[0]) / len(p)


def overlap_area(p: np.ndarray, q: np.ndarray, width: float | None = None) -> float:
    """Area of the intersection of two densities on bins of ``width`` (default: the fixed bins over
    ``[-1, 1]``): ``sum min(p, q) * width``."""
    p, q, width = _check_densities(p, q, width)
    return float(np.minimum(p, q).sum() * width)


def bhattacharyya(p: np.ndarray, q: np.ndarray, width: float | None = None) -> float:
    """Bhattacharyya coefficient of two densities on bins of ``width``: ``sum sqrt(p q) * width``."""
    p, q, width = _check_densities(p, q, width)
    return float(np.sqrt(p * q).sum() * width)


def overlap_noise(n_paired: int, n_unpaired: int, bins: int) -> float | None:
    """About how far below 1 the overlap of two samples of one distribution reads with these pair
    counts on ``bins`` bins (the order of the estimate's sampling error; module doc)."""
    if n_paired < 1 or n_unpaired < 1:
        return None
    return math.sqrt(bins * (1 / n_paired + 1 / n_unpaired) / (2 * math.pi))


def _as_features(feats: Any, name: str = "features") -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def l2_normalise(feats: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); a zero row is an error."""
    x = _as_features(feats)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{int((norms == 0).sum())} feature row(s) have zero norm; cosine similarity is undefined")
    return x / norms


def feature_variance(feats: Any) -> float:
    """Mean per-dimension (population, ddof=0) variance of the L2-normalised features."""
    x = l2_normalise(feats)
    return float(x.var(axis=0).mean())


@dataclass
class SimilarityHistograms:
    """Paired / unpaired pair counts on the fixed bins, and how they were obtained."""

    paired: np.ndarray            # [bins] int64 counts of same-class pairs
    unpaired: np.ndarray          # [bins] int64 counts of different-class pairs
    n_items: int
    total_pairs: int              # N (N - 1) / 2
    exact: bool                   # every pair (True) or a sample (False)
    sample_size: int | None = None  # pairs drawn when sampled
    seed: int | None = None
    paired_sum: float = 0.0       # sums of the similarities (for exact means)
    unpaired_sum: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bins(self) -> int:
        return len(self.paired)

    @property
    def edges(self) -> np.ndarray:
        return bin_edges(self.bins)

    @property
    def n_paired(self) -> int:
        return int(self.paired.sum())

    @property
    def n_unpaired(self) -> int:
        return int(self.unpaired.sum())

    @property
    def paired_density(self) -> np.ndarray:
        return density(self.paired)

    @property
    def unpaired_density(self) -> np.ndarray:
        return density(self.unpaired)


def _labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ValueError(f"labels must be a 1-D array of length {n} (one per feature row), got shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        if lab.dtype.kind == "f" and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    return lab


def similarity_histograms(
    feats: Any,
    labels: Any,
    bins: int = FINE_BINS,
    sample_pairs: int | None = None,
    seed: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> SimilarityHistograms:
    """Histograms of the cosine similarities of all pairs ``i < j``, split by same/different label.

    ``sample_pairs=None`` is exact: the upper triangle is visited in row chunks of at most
    ``chunk_elements`` similarities each. ``sample_pairs=S`` draws S pairs ``i != j`` uniformly (with
    replacement) from a generator seeded with ``seed``; the draw depends only on (N, S, seed), so
    two feature streams of the same images see the same pairs.
    """
    x = l2_normalise(feats)
    n = x.shape[0]
    lab = _labels(labels, n)
    total = n * (n - 1) // 2
    bins = int(bins)
    bin_edges(bins)  # validates
    if n < 2:
        raise ValueError(f"need at least 2 feature rows to form a pair, got {n}")
    if sample_pairs is not None:
        return _sampled(x, lab, bins, int(sample_pairs), seed, total, chunk_elements)

    counts = np.zeros(2 * bins, dtype=np.int64)  # [unpaired bins | paired bins]
    sums = np.zeros(2)
    rows = max(1, int(chunk_elements) // max(n, 1))
    chunks = 0
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        # Row i pairs with columns j > i only: take columns from ``start + 1`` and mask the triangle.
        sims = x[start:stop] @ x[start + 1:].T                                    # [b, n - start - 1]
        cols = np.arange(start + 1, n)
        upper = cols[None, :] > np.arange(start, stop)[:, None]
        same = lab[start:stop, None] == lab[None, start + 1:]
        values = sims[upper]
        is_same = same[upper]
        idx = bin_indices(values, bins) + bins * is_same
        counts += np.bincount(idx, minlength=2 * bins)
        sums += np.bincount(is_same.astype(np.intp), weights=values, minlength=2)
        chunks += 1
    return SimilarityHistograms(
        paired=counts[bins:], unpaired=counts[:bins], n_items=n, total_pairs=total, exact=True,
        paired_sum=float(sums[1]), unpaired_sum=float(sums[0]), extra={"chunks": chunks, "chunk_rows": rows},
    )


# Pairs are drawn in blocks of this many, so the sample depends only on (N, size, seed) and the
# index arrays of a large sample never sit in memory at once.
_PAIR_BLOCK = 1 << 20


def _pair_blocks(n: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if n < 2:
        raise ValueError(f"need at least 2 items to sample pairs, got {n}")
    if size < 1:
        raise ValueError(f"sample size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    for start in range(0, size, _PAIR_BLOCK):
        m = min(_PAIR_BLOCK, size - start)
        i = rng.integers(0, n, size=m)
        # j uniform over the n - 1 items other than i: an ordered pair uniform over i != j, hence
        # an unordered pair uniform over all n (n - 1) / 2 pairs.
        j = rng.integers(0, n - 1, size=m)
        j = j + (j >= i)
        yield np.minimum(i, j), np.maximum(i, j)


def sample_pair_indices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``size`` uniformly drawn unordered pairs ``(i, j)``, ``i < j``, of ``n`` items (with replacement)."""
    blocks = list(_pair_blocks(n, size, seed))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _sampled(x: np.ndarray, lab: np.ndarray, bins: int, size: int, seed: int, total: int,
             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> SimilarityHistograms:
    step = max(1, int(chunk_elements) // x.shape[1])  # pairs per step: two gathered [step, D] blocks
    counts = np.zeros(2 * bins, dtype=np.int64)
    sums = np.zeros(2)
    for first, second in _pair_blocks(x.shape[0], size, seed):
        for s in range(0, len(first), step):
            i, j = first[s:s + step], second[s:s + step]
            values = np.einsum("nd,nd->n", x[i], x[j])
            is_same = lab[i] == lab[j]
            counts += np.bincount(bin_indices(values, bins) + bins * is_same, minlength=2 * bins)
            sums += np.bincount(is_same.astype(np.intp), weights=values, minlength=2)
    return SimilarityHistograms(
        paired=counts[bins:], unpaired=counts[:bins], n_items=x.shape[0], total_pairs=total, exact=False,
        sample_size=size, seed=seed, paired_sum=float(sums[1]), unpaired_sum=float(sums[0]),
    )


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def overlap_record(hist: SimilarityHistograms, variance: float | None = None, bins: Bins | None = None) -> dict[str, Any]:
    """JSON-ready figures of one feature stream from its histograms, read on ``bins`` (default:
    :func:`choose_bins` of this stream alone).

    ``overlap`` and ``bhattacharyya`` are ``None`` when one of the two groups has no pairs (every
    class a singleton, or a single class).
    """
    bins = bins or choose_bins([hist])
    p, q = density(bins.counts(hist.paired), bins.width), density(bins.counts(hist.unpaired), bins.width)
    defined = hist.n_paired > 0 and hist.n_unpaired > 0
    return {
        "overlap": overlap_area(p, q, bins.width) if defined else None,
        "bhattacharyya": bhattacharyya(p, q, bins.width) if defined else None,
        "overlap_noise": overlap_noise(hist.n_paired, hist.n_unpaired, bins.count),
        "variance": variance,
        "paired_mean_sim": _finite_or_none(hist.paired_sum / hist.n_paired) if hist.n_paired else None,
        "unpaired_mean_sim": _finite_or_none(hist.unpaired_sum / hist.n_unpaired) if hist.n_unpaired else None,
        "n_items": hist.n_items,
        "n_pairs": {"paired": hist.n_paired, "unpaired": hist.n_unpaired, "total": hist.n_paired + hist.n_unpaired},
        "total_pairs": hist.total_pairs,
        "mode": "exact" if hist.exact else "sampled",
        "sample_size": hist.sample_size,
        "seed": hist.seed,
        "paired_density": [float(v) for v in p],
        "unpaired_density": [float(v) for v in q],
    }


def overlap_stats(
    feats: Any,
    labels: Any,
    bins: int | str = "auto",
    sample_pairs: int | None = None,
    seed: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, Any]:
    """Overlap, Bhattacharyya coefficient, variance and densities of one labelled feature set, on
    ``bins`` bins (or ``"auto"``) over its similarities' range."""
    hist = similarity_histograms(feats, labels, FINE_BINS, sample_pairs, seed, chunk_elements)
    return overlap_record(hist, feature_variance(feats), choose_bins([hist], bins))


def compare_streams(
    original: Any,
    corrected: Any | None,
    labels: Any,
    bins: int | str = "auto",
    sample_pairs: int | None = None,
    seed: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, Any]:
    """Original vs corrected figures (same pairs for both when sampled, same bins over the range
    of both) and their differences.

    Returns ``{"bins", "original", "corrected" (or None), "delta" (corrected - original, or None)}``.
    """
    kw = dict(bins=FINE_BINS, sample_pairs=sample_pairs, seed=seed, chunk_elements=chunk_elements)
    hists = [similarity_histograms(original, labels, **kw)]
    if corrected is not None:
        c = _as_features(corrected, "corrected features")
        o = _as_features(original, "original features")
        if c.shape != o.shape:
            raise ValueError(f"corrected features have shape {c.shape}, original {o.shape}: they must match")
        hists.append(similarity_histograms(c, labels, **kw))
    common = choose_bins(hists, bins)
    orig = overlap_record(hists[0], feature_variance(original), common)
    corr = None
    delta = None
    if corrected is not None:
        corr = overlap_record(hists[1], feature_variance(corrected), common)
        delta = {
            key: (corr[key] - orig[key]) if corr[key] is not None and orig[key] is not None else None
            for key in ("overlap", "bhattacharyya", "variance", "paired_mean_sim", "unpaired_mean_sim")
        }
    return {"bins": common.record(), "original": orig, "corrected": corr, "delta": delta}

