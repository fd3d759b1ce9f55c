"""Image-encoding throughput: plain open_clip vs clipimo's original and corrected streams.

Same images, same run, interleaved repetitions (so drift hits all three alike); the median time
per batch is reported. Targets: original stream within 1% of plain open_clip, corrected within 5%.
Runs on CUDA when available (bf16 autocast there unless ``--precision fp32``, the default of
``clipimo features``), else on CPU in fp32.

    python benchmarks/bench_encode.py [--model ViT-B-16] [--batch 32] [--reps 7] [--precision fp32|bf16]
    python benchmarks/bench_encode.py --model clipimo-tiny-vit --reps 3     # quick smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from clipimo import adapters_enabled, add_adapters, load_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--pretrained", default=None, help="weights (tag or file); random init by default: speed does not depend on them")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                    help="bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")

    plain = load_clip(args.model, args.pretrained, device=device).model
    adapted = load_clip(args.model, args.pretrained, device=device).model
    add_adapters(adapted)
    with torch.no_grad():
        for block in adapted.visual.transformer.resblocks:
            block.adapter.up.weight.normal_(0, 0.02)  # a trained-looking adapter; speed is value-independent
    size = plain.visual.image_size[0]
    x = torch.randn(args.batch, 3, size, size, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def timed(model, on):
        ctx = adapters_enabled(model, on) if on is not None else contextlib.nullcontext()
        with ctx, torch.inference_mode(), amp:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.encode_image(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    runs = {"plain open_clip": (plain, None), "clipimo original": (adapted, False), "clipimo corrected": (adapted, True)}
    for model, on in runs.values():  # warm-up
        timed(model, on)
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, (model, on) in runs.items():
            times[name].append(timed(model, on))
    base = statistics.median(times["plain open_clip"])
    where = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch}, {device.type}{where}, "
          f"{'bf16 autocast' if precision == 'bf16' else 'fp32'}, median of {args.reps} interleaved reps")
    print(f"{'stream':<20}{'s/batch':>10}{'images/s':>11}{'vs plain':>10}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<20}{t:>10.4f}{args.batch / t:>11.1f}{t / base:>10.3f}")
    orig = statistics.median(times["clipimo original"]) / base
    corr = statistics.median(times["clipimo corrected"]) / base
    print(f"original stream overhead {100 * (orig - 1):+.1f}% (target <= 1%), "
          f"corrected {100 * (corr - 1):+.1f}% (target <= 5%)")


if __name__ == "__main__":
    main()
