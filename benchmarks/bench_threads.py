"""The CPU thread policy (clipimo.utils.threads) on a busy machine: the same workload with and
without it while a competitor process burns CPU on every core, as other jobs do on a shared machine.

Each variant runs in a fresh process (the OpenMP settings act when torch loads); the variants
alternate, so drift in the machine's load hits both alike. Reported per run: wall time, CPU time
of the workload process (all its threads) and their ratio (how many cores it kept busy).

    python benchmarks/bench_threads.py [--reps 3] [--model ViT-B-32] [--batch 16] [--no-competitor]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BURN = "import time\nwhile True:\n    time.perf_counter()\n"
POLICY_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def workload(model_name: str, batch: int, policy: bool) -> None:
    """Encode random images with a random-init CLIP tower (what `features`/`run` do on CPU) and
    run many small matrix products (a training step's or a search's many short parallel regions)."""
    if policy:
        from clipimo.utils.threads import apply_thread_policy

        apply_thread_policy()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from clipimo import load_clip

    model = load_clip(model_name).model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a = torch.randn(256, 256)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        model.encode_image(x)
        for _ in range(2000):
            a = torch.tanh(a @ a.T / 256)
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                      "threads": torch.get_num_threads()}))


def run_child(args: argparse.Namespace, policy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--batch", str(args.batch)]
    out = subprocess.run(cmd + (["--policy"] if policy else []), env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-competitor", action="store_true", help="measure on the machine as it is")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload(args.model, args.batch, args.policy)
        return
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    burners = [] if args.no_competitor else [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(cores)]
    runs: dict[bool, list[dict]] = {False: [], True: []}
    try:
        for _ in range(args.reps):
            for policy in (False, True):
                runs[policy].append(run_child(args, policy))
    finally:
        for p in burners:
            p.kill()
            p.wait()
    print(f"{args.model} batch {args.batch} + 2000 small matmuls; {cores} core(s) available; "
          f"{'no competitor' if args.no_competitor else f'{cores} CPU-burning competitor process(es)'}; "
          f"load average before: {load:.1f}")
    print("| policy | threads | wall s (each run) | median wall s | median CPU s | CPU / wall |")
    print("|---|---|---|---|---|---|")
    for policy in (False, True):
        r = runs[policy]
        wall = statistics.median(x["wall"] for x in r)
        cpu = statistics.median(x["cpu"] for x in r)
        each = ", ".join(f"{x['wall']:.1f}" for x in r)
        print(f"| {'PASSIVE, capped' if policy else 'torch default'} | {r[0]['threads']} | {each} | {wall:.2f} | "
              f"{cpu:.2f} | {cpu / wall:.2f} |")
    off, on = (statistics.median(x["wall"] for x in runs[p]) for p in (False, True))
    off_cpu, on_cpu = (statistics.median(x["cpu"] for x in runs[p]) for p in (False, True))
    print(f"without / with policy: wall x{off / on:.2f}, CPU time x{off_cpu / on_cpu:.2f}")


if __name__ == "__main__":
    main()
