"""Exact vectorised Tip-Adapter / Tip-X search against the per-point loop (issue 4 benchmark).

Problem: 100 classes x 16 shots (N = 1,600 cache), 1,649 val and 2,465 test queries, D = 512,
unit-norm synthetic features with class structure (``clipimo.features.file.synthetic_features``).
The vectorised search covers the full paper grids (4,000 Tip, 200,000 Tip-X points). The naive
loop (full logits from precomputed A and R at each point, argmax, count) is timed on a random
sample of points and extrapolated (both timings best of 3 rounds); for Tip it also runs in full. Every sampled point, the
chosen point and its grid neighbours are checked to give identical hit counts. Prints figures;
timings are not asserted.

    python benchmarks/bench_search.py [--device cpu|cuda] [--sample 40] [--no-full-tip]
    python benchmarks/bench_search.py --classes 20 --sample 5 --no-full-tip   # quick smoke run
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from clipimo.features.file import synthetic_features
from clipimo.methods.cache import grid_counts, kl_divergence, logits, rescaled_sums
from clipimo.methods.common import Problem, class_sums, count_hits
from clipimo.methods.search import PAPER_GRID, first_best

REPEATS = 3  # both timings are the best of this many rounds (the CPU may be shared)


def naive_terms(p: Problem, split, corrected: bool, with_kl: bool):
    z = 100.0 * (split.feats @ p.text_weights)
    a = split.query(corrected) @ p.keys(corrected).T
    r = None
    if with_kl:
        kl = kl_divergence(split.feats, p.cache_keys, p.text_weights)
        counts = torch.bincount(p.cache_labels, minlength=p.num_classes).float()
        r = rescaled_sums(class_sums(kl, p.cache_labels, p.num_classes), counts, (kl.amin(), kl.amax()),
                          (a.amin(), a.amax()))
    return z, a, r


def naive_point(p: Problem, terms, labels, alpha: float, beta: float, gamma: float) -> int:
    """The original per-point computation (full logits, argmax, count) with the same terms: class
    sums of ``exp(-beta (1 - A))`` and ``R L`` from the per-class KL sums (``r``)."""
    z, a, rl = terms
    e = class_sums(torch.exp(-beta * (1 - a)), p.cache_labels, p.num_classes)
    logits = z + alpha * e if rl is None else z + gamma * (-rl) + alpha * e
    return int((logits.argmax(1) == labels).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(p: Problem, corrected: bool, with_kl: bool, sample: int, full_naive: bool,
          rng: np.random.Generator) -> None:
    grid, dev = PAPER_GRID, p.text_weights.device
    gammas = grid.gammas if with_kl else np.zeros(1)
    shape = (len(grid.alphas), len(grid.betas), len(gammas))
    name = ("tipx" if with_kl else "tip") + ("-imo" if corrected else "")

    fast_s = float("inf")
    for _ in range(REPEATS):
        sync(dev)
        t0 = time.perf_counter()
        counts = grid_counts(p, corrected, with_kl, grid)
        best = first_best(counts)
        sync(dev)
        fast_s = min(fast_s, time.perf_counter() - t0)

    terms = naive_terms(p, p.val, corrected, with_kl)
    point = lambda i, j, k: naive_point(p, terms, p.val.labels, float(grid.alphas[i]),  # noqa: E731
                                        float(grid.betas[j]), float(gammas[k]))
    flat = rng.choice(counts.size, size=min(sample, counts.size), replace=False)
    picks = [np.unravel_index(f, shape) for f in flat]
    per_point = float("inf")
    for _ in range(REPEATS):
        sync(dev)
        t0 = time.perf_counter()
        sampled = [point(*ijk) for ijk in picks]
        sync(dev)
        per_point = min(per_point, (time.perf_counter() - t0) / len(picks))
    naive_s = per_point * counts.size
    mismatches = sum(int(counts[ijk]) != h for ijk, h in zip(picks, sampled))

    near = [tuple(np.clip(np.add(best, d), 0, np.subtract(shape, 1)))
            for d in itertools.product((-1, 0, 1), repeat=3)]
    mismatches += sum(int(counts[ijk]) != point(*ijk) for ijk in set(near))

    full_note = ""
    if full_naive:
        t0 = time.perf_counter()
        loop_best, loop_at = -1, None
        for ijk in np.ndindex(*shape):  # alpha-major, then beta, then gamma
            h = point(*ijk)
            mismatches += int(counts[ijk]) != h
            if h > loop_best:
                loop_best, loop_at = h, ijk
        full_s = time.perf_counter() - t0
        mismatches += loop_at != best
        full_note = f"; full naive loop {full_s:.1f} s (x{full_s / fast_s:.0f}), same choice: {loop_at == best}"

    hp = dict(alpha=float(grid.alphas[best[0]]), beta=float(grid.betas[best[1]]), gamma=float(gammas[best[2]]))
    test_fast = count_hits(logits(p, p.test, corrected, with_kl, **hp), p.test.labels)
    test_naive = naive_point(p, naive_terms(p, p.test, corrected, with_kl), p.test.labels, **hp)
    mismatches += test_fast != test_naive
    n_val, n_test = len(p.val.labels), len(p.test.labels)
    print(f"{name:9s} {counts.size:7d} points  vectorised {fast_s:7.2f} s  naive {per_point * 1e3:6.2f} ms/point"
          f" -> {naive_s:8.1f} s extrapolated  speed-up x{naive_s / fast_s:,.0f}")
    print(f"          chosen {({k: round(v, 4) for k, v in hp.items() if with_kl or k != 'gamma'})}"
          f" val {100 * counts[best] / n_val:.2f}%  test {100 * test_fast / n_test:.2f}%"
          f" (naive test {100 * test_naive / n_test:.2f}%); checked {len(picks)} sampled points"
          f" + {len(set(near))} around the choice{full_note}; mismatches: {mismatches}")
    assert mismatches == 0, f"{name}: vectorised search disagrees with the naive loop"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sample", type=int, default=40, help="naive points timed per search")
    ap.add_argument("--no-full-tip", action="store_true", help="skip the full 4,000-point naive Tip loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=100,
                    help="classes of the problem (val and test queries scale with it; smaller for a quick run)")
    args = ap.parse_args()
    n_val, n_test = round(1649 * args.classes / 100), round(2465 * args.classes / 100)
    feats = synthetic_features(num_classes=args.classes, shots=16, n_val=n_val, n_test=n_test, dim=512, seed=args.seed)
    p = Problem.from_features(feats, args.device)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"C={args.classes}, N={len(feats.cache_labels)}, val {len(feats.val_labels)}, test {len(feats.test_labels)}, D=512")
    rng = np.random.default_rng(args.seed)
    grid_counts(p, False, False, PAPER_GRID)  # warm-up (thread pools, allocator)
    for with_kl in (False, True):
        for corrected in (False, True):
            bench(p, corrected, with_kl, args.sample, full_naive=not with_kl and not corrected
                  and not args.no_full_tip, rng=rng)


if __name__ == "__main__":
    main()
