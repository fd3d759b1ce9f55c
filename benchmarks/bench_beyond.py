"""Time and peak memory of ProKeR, APE and Tip-F (each also -imo) on an ImageNet 16-shot sized task (issue 13).

Defaults are the ImageNet 16-shot size: C = 1,000 classes x 16 shots (N = 16,000 keys), E = 10
views, D = 512, 10,000 val and 50,000 test queries (synthetic features with class structure; the
corrected stream is a second noisy copy). Each method runs in its own fresh process, so the peak
resident memory printed is that method's. ProKeR prints the views mode ``auto`` picked and the
kernel size. ``--proker-betas K``, ``--proker-lmbdas K`` and ``--ape-betas K`` search only the
first K values (of 20, 10 and 200) and ``--epochs K`` trains Tip-F K of its 20 epochs; the full
time is then extrapolated linearly (every grid point / epoch costs the same), plus the measured
test refit or search, and printed as an ESTIMATE.

    python benchmarks/bench_beyond.py                                  # ImageNet size (slow on CPU)
    python benchmarks/bench_beyond.py --proker-betas 1 --proker-lmbdas 1 --ape-betas 2 --epochs 2  # estimated
    python benchmarks/bench_beyond.py --classes 100 --val 1000 --test 5000 --proker-betas 1
"""
from __future__ import annotations

import time

import numpy as np
from isolated import peak_rss_gb, run_each, task_line, task_parser


def build(args):
    """A synthetic task with E per-pass views per stream (keys = normalised mean of the passes)."""
    from clipimo.features.file import feature_arrays, synthetic_features, validate_features

    arrays = feature_arrays(synthetic_features(num_classes=args.classes, shots=args.shots, n_val=args.val,
                                               n_test=args.test, dim=args.dim, seed=0))
    rng = np.random.default_rng(1)
    for key in ("cache_keys", "cache_keys_corrected"):
        raw = arrays[key][None] + 0.5 * rng.standard_normal((args.passes, *arrays[key].shape), dtype=np.float32) \
            / np.sqrt(args.dim)
        views = raw / np.linalg.norm(raw, axis=2, keepdims=True)
        mean = raw.mean(0)
        arrays[key.replace("keys", "views")] = views.astype(np.float32)
        arrays[key] = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
    return validate_features(arrays, "benchmark task")


def worker(args, path: str, method: str, queue) -> None:
    import torch

    from clipimo.features.file import load_features
    from clipimo.methods import ape, proker, tipf
    from clipimo.methods.common import MethodOptions, Problem, count_hits

    torch.set_num_threads(args.threads)
    problem = Problem.from_features(load_features(path), args.device)
    corrected = method.endswith("-imo")
    base = peak_rss_gb()
    start = time.perf_counter()
    if method.startswith("proker"):
        options = MethodOptions(proker_views=args.proker_views)
        sup = proker.support_set(problem, corrected, views=args.proker_views)
        betas, lmbdas = proker.grid_for(options)
        used, used_l = betas[: args.proker_betas or len(betas)], lmbdas[: args.proker_lmbdas or len(lmbdas)]
        counts = proker.grid_counts(problem, sup, used, used_l)
        search = time.perf_counter() - start
        ib, il = divmod(int(np.argmax(counts)), counts.shape[1])
        count_hits(proker.logits(problem, problem.test, sup, float(used[ib]), float(lmbdas[il])), problem.test.labels)
        elapsed = time.perf_counter() - start
        route = "eigh per beta" if len(lmbdas) >= proker.EIGH_MIN_LMBDAS else "Cholesky per point"
        extra = (f"views mode {sup.mode} (--proker-views {args.proker_views}), kernel rows n = {sup.feats.shape[0]:,}, "
                 f"{route}; search {search:.0f} s for {len(used)} x {len(used_l)} points, test refit "
                 f"{elapsed - search:.0f} s")
        if counts.size < len(betas) * len(lmbdas):
            elapsed = search * len(betas) * len(lmbdas) / counts.size + elapsed - search
            extra += f"; ESTIMATED full run ({len(betas)} x {len(lmbdas)} points)"
    elif method.startswith("ape"):
        betas, alphas, gammas = ape.search_grid()
        used = betas[: args.ape_betas or len(betas)]
        result = ape.run(problem, corrected, grid=(used, alphas, gammas))
        elapsed = time.perf_counter() - start
        extra = f"feat_num {result.meta['feat_num']}, {len(used)} x {len(alphas)} x {len(gammas)} points"
        if len(used) < len(betas):
            elapsed *= len(betas) / len(used)
            extra += f"; searched {len(used)} of {len(betas)} betas: ESTIMATED full run (test scoring scaled too)"
    elif method.startswith("tip-f"):
        from clipimo.methods import tip

        trained, meta = tipf.trained_problem(problem, corrected, MethodOptions(tipf_batch=args.tipf_batch),
                                             epochs=args.epochs)
        train = time.perf_counter() - start
        tip.run(trained, corrected)  # its test pass also scores top-5 and recall, as tip-f does
        elapsed = time.perf_counter() - start
        extra = (f"{args.epochs} epochs {train:.0f} s (chosen epoch {meta['epoch']}), Tip search + test "
                 f"{elapsed - train:.0f} s")
        if args.epochs < tipf.EPOCHS:
            elapsed = train * tipf.EPOCHS / args.epochs + elapsed - train
            extra += f"; ESTIMATED full run ({tipf.EPOCHS} epochs)"
    else:
        raise SystemExit(f"unknown method {method}")
    queue.put((method, elapsed, base, peak_rss_gb(), extra))


def main() -> None:
    ap = task_parser(__doc__.splitlines()[0], "proker,proker-imo,ape,ape-imo,tip-f,tip-f-imo")
    ap.add_argument("--proker-views", default="auto", choices=["auto", "all", "mean"])
    ap.add_argument("--proker-betas", type=int, default=0, help="search only the first K betas (0: all 20)")
    ap.add_argument("--proker-lmbdas", type=int, default=0, help="search only the first K lmbdas (0: all 10)")
    ap.add_argument("--ape-betas", type=int, default=0, help="search only the first K betas (0: all 200)")
    ap.add_argument("--epochs", type=int, default=20, help="tip-f epochs (fewer: the time of 20 is ESTIMATED)")
    ap.add_argument("--tipf-batch", type=int, default=256)
    args = ap.parse_args()
    print(task_line(args))
    from clipimo.methods.proker import pick_views

    print(f"ProKeR --proker-views auto picks '{pick_views('auto', args.passes, args.classes * args.shots)}' here "
          f"(E*N = {args.passes * args.classes * args.shots:,}), '{pick_views('auto', 10, 16_000)}' at ImageNet "
          "16-shot (E*N = 160,000)")
    run_each(args, build(args), args.methods.split(","), worker)


if __name__ == "__main__":
    main()
