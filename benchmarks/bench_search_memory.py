"""Peak memory of the chunked search on an ImageNet-size cache (issue 4: must fit in 24 GB).

1,000 classes x 16 shots (N = 16,000 cache keys), D = 512. The search holds one query chunk of
[queries, cache] matrices at a time, so its peak does not grow with the number of queries beyond
the feature arrays themselves (50,000 x 512 x 4 B = 100 MB per stream and split), once a split
fills a whole chunk (about 2,100 queries here; the default 4,200 spans two). This script runs
Tip and Tip-X on ``--queries`` val and test queries and prints the process's peak resident memory
before and after, plus the feature-array size a 50,000-query split would add.

    python benchmarks/bench_search_memory.py [--queries 4200] [--device cpu]
"""
from __future__ import annotations

import argparse
import resource
import time

from clipimo.features.file import synthetic_features
from clipimo.methods.common import Problem
from clipimo.methods.registry import METHODS


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=4200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    feats = synthetic_features(num_classes=1000, shots=16, n_val=args.queries, n_test=args.queries, dim=512, seed=0)
    problem = Problem.from_features(feats, args.device)
    base = peak_rss_gb()
    print(f"C=1000, N=16000, D=512, {args.queries} val + {args.queries} test queries, device {args.device}")
    print(f"peak RSS after building the problem: {base:.2f} GB")
    for name in ("tip", "tipx"):
        start = time.perf_counter()
        result = METHODS[name](problem)
        print(f"{name:5s} search {time.perf_counter() - start:7.1f} s, chosen {result.hparams}, "
              f"peak RSS so far {peak_rss_gb():.2f} GB")
    extra = 2 * 2 * (50_000 - args.queries) * 512 * 4 / 2**30
    print(f"a 50,000-query val and test would add {extra:.2f} GB of feature arrays (both streams): "
          f"estimated peak {peak_rss_gb() + extra:.2f} GB (limit 24 GB)")


if __name__ == "__main__":
    main()
