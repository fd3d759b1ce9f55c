"""APE's validation search against the previous one and against Tip's whole search, in one run (issue 23).

Synthetic features (D = 512) at ``--classes`` x ``--shots`` with ``--val`` queries; defaults are
ImageNet 16-shot (1,000 x 16, 10,000 val). The first of every ``200 / --betas`` betas of APE's
default grid are searched (all 20 alphas x 20 gammas each) by the current search and by
``previous_ape.py``; both are timed, their counts must be identical, and the full 200-beta time
is extrapolated (every beta costs about the same). Tip's whole val search (200 alphas x 20 betas)
on the same task is timed for scale, and so is the floor of any search that scores the grid from
the cache terms: the affinities' exponentials and the per-class sums for every (beta, gamma),
with no counting at all.

    python benchmarks/bench_ape.py                                  # ImageNet 16-shot, 4 betas
    python benchmarks/bench_ape.py --classes 2000 --shots 2 --val 4000
"""
from __future__ import annotations

import argparse
import os
import time

import previous_ape
import torch

from clipimo.features.file import synthetic_features
from clipimo.methods import ape, cache
from clipimo.methods.common import Problem
from clipimo.utils.device import full_float32


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--betas", type=int, default=4, help="betas searched (spread over the 200), 200 for all")
    ap.add_argument("--no-previous", action="store_true", help="skip the previous search")
    args = ap.parse_args(argv)
    problem = Problem.from_features(synthetic_features(args.classes, args.shots, args.val, 10, 512, views=0))
    betas, alphas, gammas = ape.search_grid()
    used = betas[:: max(1, len(betas) // args.betas)][: args.betas]
    scale = len(betas) / len(used)
    feat_num = ape.default_feat_num(512)
    print(f"C={args.classes}, N={args.classes * args.shots:,}, val {args.val:,}; {len(used)} of {len(betas)} betas; "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    report = {}
    with full_float32():
        start = time.perf_counter()
        ref = ape.refine(problem, False, feat_num)
        new = ape.val_counts(problem, ref, used, alphas, gammas)
        report["ape_s"] = (time.perf_counter() - start) * scale
        start = time.perf_counter()
        weights = ape.slot_weights(ref, gammas)
        for rows, z, distance in ape._terms(problem, problem.val, ref, None):
            buffer = torch.empty_like(distance)
            for beta in used:
                ape.cache_terms(distance, float(beta), weights, ref, buffer)
        report["floor_s"] = (time.perf_counter() - start) * scale
        if not args.no_previous:
            start = time.perf_counter()
            old = previous_ape.val_counts(problem, False, feat_num, used, alphas, gammas)
            report["previous_s"] = (time.perf_counter() - start) * scale
            report["identical"] = bool((old == new).all())
        start = time.perf_counter()
        cache.grid_counts(problem, False, False)
        report["tip_s"] = time.perf_counter() - start
    report["load"] = os.getloadavg()[0]
    ape_s, floor_s, tip_s = report["ape_s"], report["floor_s"], report["tip_s"]
    print(f"APE search {ape_s:.0f} s (200 betas, extrapolated); Tip's whole search {tip_s:.1f} s: APE x{ape_s / tip_s:.0f} Tip",
          flush=True)
    print(f"its cache terms alone (exp + class sums, no counting) {floor_s:.0f} s: APE x{ape_s / floor_s:.1f} that "
          f"floor, the floor x{floor_s / tip_s:.0f} Tip's whole search", flush=True)
    if "previous_s" in report:
        print(f"previous search {report['previous_s']:.0f} s (x{report['previous_s'] / ape_s:.1f} APE's), identical "
              f"counts: {report['identical']}", flush=True)
    print(f"load average now {report['load']:.1f}", flush=True)
    return report


if __name__ == "__main__":
    main()
