"""Time of the paper's few-shot sweep from cached features: the seven methods on every (dataset, shots) cell.

Synthetic unit-norm features (``clipimo.features.file.synthetic_features``, D = 512, with 10 augmented
views per support for GDA) at the real split sizes of the 14 datasets (classes, val, test; ImageNet
with a 10-per-class held-out val and its 50,000 test images), shots 1, 2, 4, 8, 16. Each cell runs
the methods as ``clipimo evaluate`` does (:func:`clipimo.methods.evaluate.run_methods`: zs, GDA and GDA-IMO
one by one, Tip, Tip-IMO, Tip-X and Tip-X-IMO together, sharing their terms; every method's test
top-1, top-5 and recall) in this one process; a seed costs the same, so the 3-seed sweep is
projected as 3 x the sum. Prints per cell each timing, the CPU seconds (on a shared machine wall
time waits for other processes) and the peak resident memory while the methods run (the
features included, their generation not).

The previous implementation (``previous_search.py``: per-method block-bounded counting, KL per
method, top-5 / recall in a second test pass) reruns the seven methods one by one on the
``--baseline`` cells in the same run, per-method times, and names the methods whose choice or
scores differ (none expected: both count exactly what a per-point loop counts).

    python benchmarks/bench_sweep.py [--datasets ImageNet] [--shots 16] [--baseline Caltech101:16,DescribableTextures:1]

On a machine shared with other jobs, run it with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that
spin while their partner waits for a core multiply wall and CPU time of the many small tensor
operations (measured: x40 on DescribableTextures 1-shot at load 10 on 2 cores); the header says
which policy was in force.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from functools import partial

import previous_search
import torch

from clipimo.features.file import synthetic_features
from clipimo.methods import cache
from clipimo.methods.common import Problem
from clipimo.methods.metrics import classification_metrics
from clipimo.methods.registry import CACHE_VARIANTS, run_method
from clipimo.utils.device import full_float32, resolve_device

# name: (classes, val, test); CoOp splits, the paper's own for CUB/StanfordDogs/PlantDoc
# (docs/methods.md, "Benchmarks and the few-shot protocol"),
# ImageNet: 10 held-out train images per class as val.
DATASETS = {
    "ImageNet": (1000, 10_000, 50_000),
    "Caltech101": (100, 1649, 2465),
    "OxfordPets": (37, 736, 3669),
    "StanfordCars": (196, 1635, 8041),
    "OxfordFlowers": (102, 1633, 2463),
    "Food101": (101, 20_200, 30_300),
    "FGVCAircraft": (100, 3333, 3333),
    "SUN397": (397, 3970, 19_850),
    "DescribableTextures": (47, 1128, 1692),
    "EuroSAT": (10, 5400, 8100),
    "UCF101": (101, 1898, 3783),
    "CUB": (200, 3503, 4680),
    "StanfordDogs": (120, 6122, 8336),
    "PlantDoc": (27, 515, 1546),
}
SHOTS = (1, 2, 4, 8, 16)
METHODS = ("zs", "gda", "gda-imo", "tip", "tip-imo", "tipx", "tipx-imo")
SHARED = "tip*"  # column of the four cache methods, run together
VIEWS = 10
DIM = 512


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: write 5 to clear_refs), so that the features'
    float64 generation does not count; elsewhere the peak stays that of the whole process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    """Peak resident memory since the last reset (VmHWM), or of the whole process."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def cell_problem(name: str, shots: int, device: torch.device, seed: int = 0) -> Problem:
    classes, n_val, n_test = DATASETS[name]
    return Problem.from_features(synthetic_features(classes, shots, n_val, n_test, DIM, seed=seed, views=VIEWS), device)


CPU = [0.0]


def timed(fn):
    """``(result, wall seconds)``; adds the process CPU seconds to ``CPU``."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    CPU[0] += time.process_time() - cpu
    return out, time.perf_counter() - start


def run_new(p: Problem, methods: list[str]) -> tuple[dict, dict]:
    """``run_methods``' work on a built problem: (results, {column: seconds})."""
    results, times = {}, {}
    shared = [m for m in methods if m in CACHE_VARIANTS]
    if shared:
        ran, times[SHARED] = timed(partial(cache.run_many, p, [CACHE_VARIANTS[m] for m in shared]))
        results.update({m: ran[CACHE_VARIANTS[m]] for m in shared})
    for m in methods:
        if m not in shared:
            results[m], times[m] = timed(partial(run_method, m, p))
    return results, times


def run_previous(p: Problem, m: str):
    """The previous run_methods on one method: its run, then metrics at the chosen point."""
    r = previous_search.RUNS[m](p)
    extra = classification_metrics(previous_search.logits_at(p, p.test, m, r.hparams), p.test.labels)
    return dataclasses.replace(r, test_top5=extra["top5"], test_mean_per_class_recall=extra["mean_per_class_recall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all 14)")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--baseline", default="Caltech101:16,DescribableTextures:1,EuroSAT:16",
                    help="dataset:shots cells also run with the previous implementation ('' for none)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    methods = args.methods.split(",")
    columns = [m for m in methods if m not in CACHE_VARIANTS] + ([SHARED] if set(methods) & set(CACHE_VARIANTS) else [])
    cells = [(d, int(k)) for d in args.datasets.split(",") for k in args.shots.split(",")]
    in_sweep = set(cells)
    baseline = {(d, int(k)) for d, k in (c.split(":") for c in args.baseline.split(",") if c)}
    cells += sorted(baseline - in_sweep)
    cells.sort(key=lambda c: (c not in baseline, DATASETS[c[0]][0] * c[1] * (DATASETS[c[0]][1] + DATASETS[c[0]][2])))
    load = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1/5/15 min), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; D={DIM}, {VIEWS} views; "
          f"{SHARED} = {', '.join(m for m in methods if m in CACHE_VARIANTS)} together", flush=True)
    print(f"{'cell':26s} {'C':>5s} {'N':>6s} {'val':>6s} {'test':>6s} | " + " ".join(f"{c:>8s}" for c in columns)
          + " |   total (CPU)  peak RSS")
    tiny = Problem.from_features(synthetic_features(5, 1, 8, 8, DIM, views=2), device)
    with full_float32():
        run_new(tiny, methods)  # warm-up: first calls pay for thread pools and lazy initialisation
        sweep, sweep_cpu = 0.0, 0.0
        for name, shots in cells:
            p = cell_problem(name, shots, device)
            reset_peak_rss()
            CPU[0] = 0.0
            results, times = run_new(p, methods)
            total, cpu = sum(times.values()), CPU[0]
            if (name, shots) in in_sweep:
                sweep += total
                sweep_cpu += cpu
            c, n_val, n_test = DATASETS[name]
            print(f"{name + ' ' + str(shots) + '-shot':26s} {c:5d} {c * shots:6d} {n_val:6d} {n_test:6d} | "
                  + " ".join(f"{times[col]:7.1f}s" for col in columns)
                  + f" | {total:6.1f}s ({cpu:6.1f}s) {peak_rss_gb():5.2f} GB", flush=True)
            if (name, shots) in baseline:
                CPU[0] = 0.0
                old = {m: timed(partial(run_previous, p, m)) for m in methods}
                old_total = sum(t for _, t in old.values())
                differ = [m for m in methods if old[m][0] != results[m]]
                print("  previous, per method: " + ", ".join(f"{m} {old[m][1]:.1f}s" for m in methods)
                      + f" | {old_total:.1f}s ({CPU[0]:.1f}s CPU), speed-up x{old_total / total:.1f}"
                      f" (CPU x{CPU[0] / max(cpu, 1e-9):.1f}); different results: {', '.join(differ) or 'none'}",
                      flush=True)
            del p
    print(f"sum over {len(in_sweep)} cells {sweep:.0f} s wall ({sweep_cpu:.0f} s CPU); projected 3-seed sweep "
          f"{3 * sweep / 60:.1f} min wall ({3 * sweep_cpu / 60:.1f} min CPU); load average now "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
