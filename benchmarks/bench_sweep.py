"""Time and memory of the few-shot sweep from cached features: every method on every (dataset, shots) cell.

The methods are every name of the registry (what ``--methods all`` runs, so methods added later show up
here by themselves). Synthetic unit-norm features (``clipimo.features.file.synthetic_features``, D = 512,
with 10 augmented views per support for GDA, ProKeR and Tip-F) at the real split sizes of the 14
datasets (classes, val, test; ImageNet with a 10-per-class held-out val and its 50,000 test images),
shots 1, 2, 4, 8, 16. Each cell runs the methods as ``clipimo evaluate`` does
(:func:`clipimo.methods.evaluate.run_methods`: Tip, Tip-IMO, Tip-X and Tip-X-IMO together, sharing
their terms, the others one by one; every method's test top-1, top-5 and recall) in this one
process. Prints per cell each method's seconds, the CPU seconds (on a shared machine wall time
waits for other processes) and the peak resident memory while the methods run (the features
included, their generation not); then per method its total, its share of the sweep and its
largest peak; a seed costs the same, so the 3-seed sweep is projected as 3 x the sum.

The previous implementation (``previous_search.py``) reruns the seven paper methods one by one on
the ``--baseline`` cells in the same run and names those whose choice or scores differ (none
expected: both count exactly what a per-point loop counts). ``--quick`` runs every method on one
tiny cell (a smoke run: the tests use it).

Next to the measured figures, every method's estimate by the cost model that announces slow cells
(``clipimo.methods.cost``) is printed, with the measured/estimated ratio, so the model's error is
seen where it can be measured. ``--estimate`` prints only those estimates, CPU and CUDA, for every
cell: the projection of a sweep too long to run here (ProKeR's kernel at 16 shots has 16,000 rows
on any dataset of 100 classes or more; the hours are the model's, not a measurement).

    python benchmarks/bench_sweep.py [--datasets ImageNet] [--shots 16] [--methods ape,tip] [--quick]
    python benchmarks/bench_sweep.py --estimate

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
from clipimo.methods import cache, cost
from clipimo.methods.common import Problem
from clipimo.methods.metrics import classification_metrics
from clipimo.methods.registry import CACHE_VARIANTS, METHODS, run_method
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
# --quick: one tiny cell, every method, no warm-up.
QUICK = {"tiny": (4, 8, 8)}
QUICK_SHOTS = (1,)
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
    classes, n_val, n_test = {**DATASETS, **QUICK}[name]
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


def run_new(p: Problem, methods: list[str]) -> tuple[dict, dict, dict]:
    """``run_methods``' work on a built problem: (results, {column: seconds}, {column: peak GB})."""
    results, times, peaks = {}, {}, {}
    shared = [m for m in methods if m in CACHE_VARIANTS]
    if shared:
        reset_peak_rss()
        ran, times[SHARED] = timed(partial(cache.run_many, p, [CACHE_VARIANTS[m] for m in shared]))
        peaks[SHARED] = peak_rss_gb()
        results.update({m: ran[CACHE_VARIANTS[m]] for m in shared})
    for m in methods:
        if m not in shared:
            reset_peak_rss()
            results[m], times[m] = timed(partial(run_method, m, p))
            peaks[m] = peak_rss_gb()
    return results, times, peaks


def estimate(name: str, shots: int, column: str, methods: list[str], device: str) -> float:
    """The cost model's seconds for one column of a cell (the shared column: its four methods)."""
    classes, n_val, n_test = {**DATASETS, **QUICK}[name]
    sizes = cost.Sizes(classes, classes * shots, n_val, n_test, DIM, VIEWS)
    names = [m for m in methods if m in CACHE_VARIANTS] if column == SHARED else [column]
    return sum(cost.seconds(m, sizes, device) for m in names)


def print_estimates(cells: list[tuple[str, int]], columns: list[str], methods: list[str]) -> dict:
    """``--estimate``: the cost model's seconds per cell and method on 2 CPU threads, and the totals on
    CPU and CUDA; nothing is run."""
    print("cost-model ESTIMATES (clipimo.methods.cost; nothing run), seconds on 2 CPU threads")
    print(f"{'cell':26s} | " + " ".join(f"{c:>10s}" for c in columns) + " |    total")
    totals = {dev: {c: 0.0 for c in columns} for dev in ("cpu", "cuda")}
    for name, shots in cells:
        row = {c: estimate(name, shots, c, methods, "cpu") for c in columns}
        for c in columns:
            totals["cpu"][c] += row[c]
            totals["cuda"][c] += estimate(name, shots, c, methods, "cuda")
        print(f"{name + ' ' + str(shots) + '-shot':26s} | " + " ".join(f"{row[c]:9.0f}s" for c in columns)
              + f" | {sum(row.values()):7.0f}s")
    cpu, cuda = sum(totals["cpu"].values()), sum(totals["cuda"].values())
    print(f"{'method':12s} {'CPU':>10s} {'share':>7s} {'CUDA':>9s}")
    for c in columns:
        print(f"{c:12s} {totals['cpu'][c]:9.0f}s {100 * totals['cpu'][c] / max(cpu, 1e-9):6.1f}% {totals['cuda'][c]:8.1f}s")
    print(f"estimated 3-seed sweep over {len(cells)} cells: {3 * cpu / 3600:.1f} h on 2 CPU threads, "
          f"{3 * cuda / 60:.1f} min with --device cuda", flush=True)
    return {"cpu_s": totals["cpu"], "cuda_s": totals["cuda"]}


def run_previous(p: Problem, m: str):
    """The previous run_methods on one method: its run, then metrics at the chosen point."""
    r = previous_search.RUNS[m](p)
    extra = classification_metrics(previous_search.logits_at(p, p.test, m, r.hparams), p.test.labels)
    return dataclasses.replace(r, test_top5=extra["top5"], test_mean_per_class_recall=extra["mean_per_class_recall"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all 14)")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: every method)")
    ap.add_argument("--baseline", default="Caltech101:16,DescribableTextures:1,EuroSAT:16",
                    help="dataset:shots cells also run with the previous implementation ('' for none)")
    ap.add_argument("--quick", action="store_true", help="every method on one tiny cell (smoke run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--estimate", action="store_true", help="print the cost model's estimates only, run nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets, args.shots, args.baseline = ",".join(QUICK), ",".join(map(str, QUICK_SHOTS)), ""
    sizes = {**DATASETS, **QUICK}
    device = resolve_device(args.device)
    methods = args.methods.split(",")
    columns = [m for m in methods if m not in CACHE_VARIANTS] + ([SHARED] if set(methods) & set(CACHE_VARIANTS) else [])
    cells = [(d, int(k)) for d in args.datasets.split(",") for k in args.shots.split(",")]
    in_sweep = set(cells)
    baseline = {(d, int(k)) for d, k in (c.split(":") for c in args.baseline.split(",") if c)}
    cells += sorted(baseline - in_sweep)
    cells.sort(key=lambda c: (c not in baseline, sizes[c[0]][0] * c[1] * (sizes[c[0]][1] + sizes[c[0]][2])))
    if args.estimate:
        return print_estimates([c for c in cells if c in in_sweep], columns, methods)
    previous = [m for m in methods if m in previous_search.RUNS]
    load = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1/5/15 min), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; D={DIM}, {VIEWS} views; "
          f"{SHARED} = {', '.join(m for m in methods if m in CACHE_VARIANTS)} together", flush=True)
    print(f"{'cell':26s} {'C':>5s} {'N':>6s} {'val':>6s} {'test':>6s} | " + " ".join(f"{c:>10s}" for c in columns)
          + " |   total (CPU)  peak RSS")
    tiny = Problem.from_features(synthetic_features(5, 1, 8, 8, DIM, views=2), device)
    per_method = {c: 0.0 for c in columns}
    estimated = {c: 0.0 for c in columns}
    peak_of = {c: 0.0 for c in columns}
    rows = []
    with full_float32():
        if not args.quick:
            run_new(tiny, methods)  # warm-up: first calls pay for thread pools and lazy initialisation
        sweep, sweep_cpu = 0.0, 0.0
        for name, shots in cells:
            p = cell_problem(name, shots, device)
            CPU[0] = 0.0
            results, times, peaks = run_new(p, methods)
            total, cpu = sum(times.values()), CPU[0]
            if (name, shots) in in_sweep:
                sweep += total
                sweep_cpu += cpu
                for col in columns:
                    per_method[col] += times[col]
                    estimated[col] += estimate(name, shots, col, methods, args.device)
                    peak_of[col] = max(peak_of[col], peaks[col])
            c, n_val, n_test = sizes[name]
            rows.append({"cell": f"{name} {shots}-shot", "seconds": times, "peak_gb": max(peaks.values())})
            print(f"{name + ' ' + str(shots) + '-shot':26s} {c:5d} {c * shots:6d} {n_val:6d} {n_test:6d} | "
                  + " ".join(f"{times[col]:9.1f}s" for col in columns)
                  + f" | {total:6.1f}s ({cpu:6.1f}s) {max(peaks.values()):5.2f} GB", flush=True)
            if (name, shots) in baseline and previous:
                CPU[0] = 0.0
                old = {m: timed(partial(run_previous, p, m)) for m in previous}
                old_total = sum(t for _, t in old.values())
                differ = [m for m in previous if old[m][0] != results[m]]
                print("  previous, per method: " + ", ".join(f"{m} {old[m][1]:.1f}s" for m in previous)
                      + f" | {old_total:.1f}s ({CPU[0]:.1f}s CPU); different results: {', '.join(differ) or 'none'}",
                      flush=True)
            del p
    print(f"{'method':12s} {'seconds':>9s} {'share':>7s} {'peak RSS':>9s} {'estimated':>10s} {'ratio':>6s}")
    for col in columns:
        print(f"{col:12s} {per_method[col]:8.1f}s {100 * per_method[col] / max(sweep, 1e-9):6.1f}% "
              f"{peak_of[col]:6.2f} GB {estimated[col]:9.1f}s {per_method[col] / max(estimated[col], 1e-9):6.2f}")
    print(f"sum over {len(in_sweep)} cells {sweep:.0f} s wall ({sweep_cpu:.0f} s CPU); projected 3-seed sweep "
          f"{3 * sweep / 60:.1f} min wall ({3 * sweep_cpu / 60:.1f} min CPU); load average now "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()), flush=True)
    return {"cells": rows, "method_seconds": per_method, "sweep_s": sweep}


if __name__ == "__main__":
    main()
