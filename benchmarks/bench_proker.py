"""ProKeR's search against its factorisation floor, timed in the same run (issue 23).

The floor of a grid of B betas x L lmbdas on an n-row kernel is B * min(L Cholesky, one eigh)
factorisations of an n x n float64 matrix; this times one bare Cholesky (and, with ``--eigh``, one
bare eigh) of a kernel of that size, then the search of the first ``--betas`` betas of the grid
(every lmbda), and prints their ratio. Synthetic features (the averaged keys: ``--proker-views
mean``), D = 512; the defaults are ImageNet 16-shot's n = 16,000 with its 10,000 val queries.

    python benchmarks/bench_proker.py --classes 500 --val 10000 --betas 1     # n = 8,000
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from clipimo.features.file import synthetic_features
from clipimo.methods import MethodOptions, Problem, proker


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--betas", type=int, default=1, help="search the first K betas of the default grid")
    ap.add_argument("--eigh", action="store_true", help="also time one bare eigh")
    args = ap.parse_args(argv)
    problem = Problem.from_features(synthetic_features(args.classes, args.shots, args.val, 10, 512, views=0))
    sup = proker.support_set(problem, False, views="mean")
    betas, lmbdas = proker.grid_for(MethodOptions())
    betas = betas[: args.betas]
    n = sup.feats.shape[0]
    print(f"n = {n:,} kernel rows, C = {args.classes}, val {args.val:,}; {len(betas)} beta(s) x {len(lmbdas)} lmbdas; "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    gram = proker.kernel(sup.kernel_feats, sup.kernel_feats, float(betas[0]))
    gram.diagonal().add_(float(lmbdas[0]))
    _, t_chol = timed(lambda: torch.linalg.cholesky(gram))
    t_eigh = timed(lambda: torch.linalg.eigh(gram))[1] if args.eigh else float("inf")
    del gram
    per_beta = min(len(lmbdas) * t_chol, t_eigh)
    floor = len(betas) * per_beta
    _, t_search = timed(lambda: proker.grid_counts(problem, sup, betas, lmbdas))
    report = {"n": n, "cholesky_s": t_chol, "eigh_s": t_eigh, "floor_s": floor, "search_s": t_search,
              "ratio": t_search / floor, "load": os.getloadavg()[0]}
    print(f"bare Cholesky {t_chol:.2f} s" + (f", bare eigh {t_eigh:.2f} s" if args.eigh else "")
          + f"; floor {floor:.1f} s, search {t_search:.1f} s: x{t_search / floor:.2f} the floor; "
          f"load average now {os.getloadavg()[0]:.1f}", flush=True)
    return report


if __name__ == "__main__":
    main()
