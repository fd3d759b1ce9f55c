"""Time of the paper's few-shot sweep from cached features: every method on every (dataset, shots) cell.

Synthetic unit-norm features (``clipimo.featurefile.synthetic_features``, D = 512, with 10 augmented
views per support for GDA) at the real split sizes of the 14 datasets (classes, val, test; ImageNet
with a 10-per-class held-out val and its 50,000 test images), shots 1, 2, 4, 8, 16. Each cell runs
every method once in this one process; a seed costs the same, so the 3-seed sweep is projected as
3 x the sum. Also prints each cell's peak resident memory while its methods run (the features
included, their generation not).

The previous implementation (one-hot products, Tip-X's KL computed twice), kept here only as the
baseline, reruns Tip and Tip-X on ``--baseline`` cells in the same run and names the methods
whose choice differs (its terms round differently, which can move a near tie).

    python benchmarks/bench_sweep.py [--datasets ImageNet] [--shots 16] [--baseline Caltech101:16,DescribableTextures:1]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Iterator

import torch

from clipimo.device import resolve_device
from clipimo.featurefile import synthetic_features
from clipimo.methods import METHODS, Problem
from clipimo.methods.common import MethodResult, Split, chunks, count_hits, percent, zeroshot_logits
from clipimo.search import PAPER_GRID, affine_logits, count_correct, first_best

# name: (classes, val, test); CoOp splits, the paper's own for CUB/StanfordDogs/PlantDoc (METHOD.md §5),
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


# ---- the previous implementation (baseline only) -------------------------------------------------

def _old_kl(query, keys, w):
    log_q = torch.log_softmax(keys @ w / 0.5, dim=1)
    out = torch.empty(query.shape[0], keys.shape[0], dtype=query.dtype, device=query.device)
    for rows in chunks(query.shape[0], keys.shape[0]):
        log_p = torch.log_softmax(query[rows] @ w / 0.5, dim=1)
        p = log_p.exp()
        out[rows] = (p * log_p).sum(1, keepdim=True) - p @ log_q.T
    return out


def _old_terms(p: Problem, split: Split, corrected: bool, with_kl: bool, onehot) -> Iterator[tuple]:
    keys, n = p.keys(corrected), split.labels.shape[0]

    def affinity(rows):
        return split.query(corrected)[rows] @ keys.T

    def kl(rows):
        return _old_kl(split.feats[rows], p.cache_keys, p.text_weights)

    if with_kl:
        ext = []
        for rows in chunks(n, keys.shape[0]):
            a, d = affinity(rows), kl(rows)
            ext.append(torch.stack([a.amin(), a.amax(), d.amin(), d.amax()]))
        ext = torch.stack(ext)
        a_lo, a_hi, k_lo, k_hi = ext[:, 0].amin(), ext[:, 1].amax(), ext[:, 2].amin(), ext[:, 3].amax()
    for rows in chunks(n, keys.shape[0]):
        rl = None
        if with_kl:
            unit = (kl(rows) - k_lo) / (k_hi - k_lo)
            rl = -(unit * (a_hi - a_lo) + a_lo) @ onehot
        yield rows, zeroshot_logits(p, split.feats[rows]), 1 - affinity(rows), rl


def old_run(p: Problem, corrected: bool, with_kl: bool) -> MethodResult:
    grid, onehot = PAPER_GRID, torch.nn.functional.one_hot(p.cache_labels, p.num_classes).float()
    gammas = grid.gammas if with_kl else None
    counts = torch.zeros(len(grid.alphas), len(grid.betas), len(gammas) if with_kl else 1, dtype=torch.long,
                         device=onehot.device)
    for rows, z, dist, rl in _old_terms(p, p.val, corrected, with_kl, onehot):
        for b, beta in enumerate(grid.betas):
            e = torch.exp(-float(beta) * dist) @ onehot
            counts[:, b, :] += count_correct(z, e, p.val.labels[rows], grid.alphas, rl, gammas)
    ia, ib, ig = first_best(counts)
    hp = {"alpha": float(grid.alphas[ia]), "beta": float(grid.betas[ib])}
    gamma = float(grid.gammas[ig]) if with_kl else 0.0
    if with_kl:
        hp["gamma"] = gamma
    hits = count_hits(((rows, affine_logits(z, torch.exp(-hp["beta"] * dist) @ onehot, hp["alpha"], rl, gamma))
                       for rows, z, dist, rl in _old_terms(p, p.test, corrected, with_kl, onehot)), p.test.labels)
    return MethodResult(percent(int(counts[ia, ib, ig]), len(p.val.labels)), percent(hits, len(p.test.labels)), hp)


OLD = {"tip": (False, False), "tip-imo": (True, False), "tipx": (False, True), "tipx-imo": (True, True)}

# --------------------------------------------------------------------------------------------------


def timed(fn):
    """``(result, wall seconds)``; adds the process CPU seconds to ``CPU`` (on a shared machine wall
    time waits for other processes, CPU time much less)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    CPU[0] += time.process_time() - cpu
    return out, time.perf_counter() - start


CPU = [0.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all 14)")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--baseline", default="Caltech101:16,DescribableTextures:1,EuroSAT:16",
                    help="dataset:shots cells also run with the previous implementation ('' for none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--verbose", action="store_true", help="also print each method's time as it ends")
    args = ap.parse_args()
    device = resolve_device(args.device)
    methods = args.methods.split(",")
    cells = [(d, int(k)) for d in args.datasets.split(",") for k in args.shots.split(",")]
    baseline = {(d, int(k)) for d, k in (c.split(":") for c in args.baseline.split(",") if c)}
    cells += sorted(baseline - set(cells))
    cells.sort(key=lambda c: (c not in baseline, DATASETS[c[0]][0] * c[1] * (DATASETS[c[0]][1] + DATASETS[c[0]][2])))
    load = os.getloadavg()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1/5/15 min); D={DIM}, {VIEWS} views")
    print(f"{'cell':26s} {'C':>5s} {'N':>6s} {'val':>6s} {'test':>6s} | " + " ".join(f"{m:>8s}" for m in methods)
          + " |   total (CPU)  peak RSS")
    tiny = Problem.from_features(synthetic_features(5, 1, 8, 8, DIM, views=2), device)
    for m in methods:  # warm-up: first calls pay for thread pools and lazy initialisation
        METHODS[m](tiny)
    sweep, sweep_cpu, in_sweep = 0.0, 0.0, set(c for c in cells if c[0] in args.datasets.split(",")
                               and str(c[1]) in args.shots.split(","))
    for name, shots in cells:
        p = cell_problem(name, shots, device)
        reset_peak_rss()
        times, results = {}, {}
        CPU[0] = 0.0
        for m in methods:
            results[m], times[m] = timed(lambda: METHODS[m](p))
            if args.verbose:
                print(f"  {name} {shots}-shot {m}: {times[m]:.1f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        total, cpu = sum(times.values()), CPU[0]
        if (name, shots) in in_sweep:
            sweep += total
            sweep_cpu += cpu
        c, n_val, n_test = DATASETS[name]
        print(f"{name + ' ' + str(shots) + '-shot':26s} {c:5d} {c * shots:6d} {n_val:6d} {n_test:6d} | "
              + " ".join(f"{times[m]:7.1f}s" for m in methods) + f" | {total:6.1f}s ({cpu:6.1f}s) {peak_rss_gb():5.2f} GB",
              flush=True)
        if (name, shots) in baseline:
            CPU[0] = 0.0
            old = {m: timed(lambda: old_run(p, *OLD[m])) for m in methods if m in OLD}
            differ = [m for m in old if old[m][0].hparams != results[m].hparams]
            print(f"{'  previous implementation':26s} {'':27s} | "
                  + " ".join(f"{old[m][1]:7.1f}s" if m in old else f"{'':8s}" for m in methods)
                  + f" | {sum(o[1] for o in old.values()):6.1f}s ({CPU[0]:6.1f}s CPU),"
                  f" speed-up x{sum(o[1] for o in old.values()) / sum(times[m] for m in old):.1f},"
                  f" other choice (rounding of near ties): {', '.join(differ) or 'none'}", flush=True)
        del p
    print(f"sum over {len(in_sweep)} cells {sweep:.0f} s wall ({sweep_cpu:.0f} s CPU); projected 3-seed sweep "
          f"{3 * sweep / 60:.1f} min wall ({3 * sweep_cpu / 60:.1f} min CPU);"
          f" load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
