"""Tip-F's cost per epoch against one forward+backward of the logits it trains (issue 23).

One epoch (every support image once, in ``--batch`` steps, then the val scoring that picks the
epoch) is timed against the bare forward and backward of the same ``[batch, C]`` adapter logits
over the same rows (no optimiser, no val), in the same run. Synthetic features with E augmented
views; the defaults are ImageNet 16-shot's sizes (N = 16,000, 10,000 val queries).

    python benchmarks/bench_tipf.py --classes 200 --val 2000
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.nn import functional as F

from clipimo.features.file import synthetic_features
from clipimo.methods import Problem, tipf
from clipimo.methods.common import zeroshot_logits


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    problem = Problem.from_features(synthetic_features(args.classes, args.shots, args.val, 10, 512, views=args.views))
    n = problem.cache_keys.shape[0]
    print(f"N = {n:,}, C = {args.classes}, val {args.val:,}, batch {args.batch}; {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    # Warm-up: the first optimiser step imports modules (about 2 s), a one-off that is not an epoch's cost.
    tipf.train_keys(Problem.from_features(synthetic_features(3, 1, 4, 4, 8, views=1)), False, epochs=1)
    view = problem.cache_views[0]
    theta = torch.nn.Parameter(problem.cache_keys.clone())
    logits = tipf.adapter(problem)

    def bare() -> None:
        for rows in torch.arange(n).split(args.batch):
            out = logits(zeroshot_logits(problem, view[rows]), view[rows], theta)
            loss = F.cross_entropy(out, problem.cache_labels[rows])
            theta.grad = None
            loss.backward()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    # Alternated, best of --repeats each: a one-off stall (page faults, another process) is not the method's.
    times = [(timed(bare), timed(lambda: tipf.train_keys(problem, False, batch=args.batch, epochs=1)))
             for _ in range(args.repeats)]
    bare_s, epoch = min(t[0] for t in times), min(t[1] for t in times)
    print(f"forward+backward {bare_s:.2f} s, one epoch {epoch:.2f} s (best of {args.repeats}): x{epoch / bare_s:.2f}; "
          f"load average now {os.getloadavg()[0]:.1f}", flush=True)
    return {"bare_s": bare_s, "epoch_s": epoch, "ratio": epoch / bare_s}


if __name__ == "__main__":
    main()
