"""Time and peak memory of LP++, ZS-LP, CLAP and TDA (each also -imo) on an ImageNet 16-shot sized task.

Defaults are the ImageNet 16-shot size: C = 1,000 classes x 16 shots (N = 16,000 support images),
E = 10 views, D = 512, 10,000 val and 50,000 test queries (synthetic features with class
structure; the corrected stream is a second noisy copy; text norms drawn in [6, 10]). Each method
runs in its own fresh process through ``run_method`` (training, val and the scored test pass), so
the peak resident memory printed is that method's. ``--epochs K`` times the linear probes with
1 and 1 + K epochs and prints the 300-epoch time (the 1-epoch run's fixed costs plus 299 times
the per-epoch difference) as an ESTIMATE.

    python benchmarks/bench_peers.py                                   # ImageNet size, full runs
    python benchmarks/bench_peers.py --methods lp++,clap --epochs 30   # estimated
    python benchmarks/bench_peers.py --device cuda --methods lp++,zs-lp,clap,tda
"""
from __future__ import annotations

import time

import numpy as np
from isolated import peak_rss_gb, run_each, task_line, task_parser

FULL_EPOCHS = 300


def build(args):
    """A synthetic task with E normalised per-pass views per stream and positive text norms."""
    from clipimo.features.file import feature_arrays, synthetic_features, validate_features

    arrays = feature_arrays(synthetic_features(num_classes=args.classes, shots=args.shots, n_val=args.val,
                                               n_test=args.test, dim=args.dim, seed=0, views=0))
    rng = np.random.default_rng(1)
    for key in ("cache_keys", "cache_keys_corrected"):
        raw = arrays[key][None] + 0.5 * rng.standard_normal((args.passes, *arrays[key].shape), dtype=np.float32) \
            / np.sqrt(args.dim)
        arrays[key.replace("keys", "views")] = (raw / np.linalg.norm(raw, axis=2, keepdims=True)).astype(np.float32)
    arrays["text_norms"] = rng.uniform(6.0, 10.0, args.classes).astype(np.float32)
    return validate_features(arrays, "benchmark task")


def worker(args, path: str, method: str, queue) -> None:
    import torch

    from clipimo.features.file import load_features, synthetic_features
    from clipimo.methods.common import MethodOptions, Problem
    from clipimo.methods.registry import METHODS
    from clipimo.utils.device import full_float32

    torch.set_num_threads(args.threads)
    problem = Problem.from_features(load_features(path), args.device)
    base = peak_rss_gb()
    probe = method.removesuffix("-imo") in ("lp++", "zs-lp", "clap")

    def timed(**epochs):
        start = time.perf_counter()
        with full_float32():
            result = METHODS[method](problem, options=MethodOptions(clap_batch=args.clap_batch), **epochs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    warm = Problem.from_features(synthetic_features(num_classes=3, shots=2, n_val=5, n_test=5, dim=8, views=2),
                                 args.device)
    METHODS[method](warm, **({"epochs": 1} if probe else {}))  # first-use start-up is not the method's time
    if probe and args.epochs < FULL_EPOCHS:  # fixed costs (init, multipliers, test pass) from a 1-epoch run
        once, _ = timed(epochs=1)
        more, result = timed(epochs=1 + args.epochs)
        per_epoch = (more - once) / args.epochs
        elapsed = once + (FULL_EPOCHS - 1) * per_epoch
        extra = (f"1 epoch run {once:.1f} s, {per_epoch:.2f} s per further epoch: ESTIMATED full run "
                 f"({FULL_EPOCHS} epochs); test top-1 after {1 + args.epochs} epochs {result.test_acc:.2f}")
    else:
        elapsed, result = timed(**({"epochs": args.epochs} if probe else {}))
        extra = f"test top-1 {result.test_acc:.2f}"
    if method.startswith("tda"):
        extra += f"; entered positive {result.meta['positive_entered']}, negative {result.meta['negative_entered']}"
    queue.put((method, elapsed, base, peak_rss_gb(), extra))


def main() -> None:
    ap = task_parser(__doc__.splitlines()[0], "lp++,lp++-imo,zs-lp,clap,clap-imo,tda,tda-imo")
    ap.add_argument("--epochs", type=int, default=FULL_EPOCHS,
                    help="linear-probe epochs (fewer: the time of 300 is ESTIMATED)")
    ap.add_argument("--clap-batch", type=int, default=256)
    args = ap.parse_args()
    print(task_line(args))

    run_each(args, build(args), args.methods.split(","), worker)


if __name__ == "__main__":
    main()
