"""Each method of a benchmark in its own spawned process on one saved features file, so the peak
memory each prints is that method's alone; the task-size flags and the header line those
benchmarks share (bench_beyond.py and bench_peers.py)."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
from typing import Any, Callable, Sequence

from clipimo.features.file import save_features


def task_parser(description: str, methods: str) -> argparse.ArgumentParser:
    """The synthetic task's sizes (ImageNet 16-shot by default), the methods, threads and device."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=50_000)
    ap.add_argument("--methods", default=methods)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    return ap


def task_line(args: argparse.Namespace) -> str:
    return (f"C={args.classes}, shots={args.shots} (N={args.classes * args.shots:,}), E={args.passes}, "
            f"D={args.dim}, val {args.val:,}, test {args.test:,}, device {args.device}, {args.threads} threads")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def run_each(args: Any, features: Any, methods: Sequence[str], worker: Callable) -> None:
    """``worker(args, path, method, queue)`` puts ``(name, seconds, base GB, peak GB, extra)``."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "task.npz")
        save_features(path, features)  # built by the caller: the workers' peaks hold no construction temporaries
        for method in methods:
            queue = ctx.Queue()
            proc = ctx.Process(target=worker, args=(args, path, method, queue))
            proc.start()
            name, elapsed, base, peak, extra = queue.get()
            proc.join()
            print(f"{name:10s} {elapsed:8.1f} s  peak RSS {peak:.2f} GB (task arrays alone {base:.2f} GB)  "
                  f"load average {os.getloadavg()[0]:.1f}  {extra}", flush=True)
