"""Each method of a benchmark in its own spawned process on one saved features file, so the peak
memory each prints is that method's alone (bench_beyond.py and bench_peers.py share this)."""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from typing import Any, Callable, Sequence

from clipimo.features.file import save_features


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
