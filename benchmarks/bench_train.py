"""Adapter-training throughput: supervised and DINO steps against a frozen-model forward on the
same batch, plus the CPU cost of the data transforms.

The steps are the real ones (``SupervisedTrainer.train_step`` / ``DinoTrainer.train_step``: forward,
loss, backward, clipping, AdamW, teacher EMA) fed synthetic pixels, so data loading is timed apart
("transforms" rows, per CPU core). Random-init weights: speed does not depend on them.

    python benchmarks/bench_train.py                       # ViT-B-16 on CPU, small batches
    python benchmarks/bench_train.py --model clipimo-tiny-vit --batch 32
    python benchmarks/bench_train.py --device cuda --precision bf16 --batch 128 --dino-batch 40   # see gpu_train_check.py
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from clipimo.model.adapter import adapters_enabled
from clipimo.train import DinoTrainer, SupervisedTrainer, make_config
from clipimo.train.data import sample_seed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call after ``warmup`` untimed calls."""
    return measure({"f": fn}, steps, warmup, device)["f"]


def measure(fns: dict, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin (fn1, fn2, ..., fn1, ...) so
    that on a shared machine every function sees the same background load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def _tiny_dataset(folder: Path, n: int) -> Path:
    """Training needs a data source for its bookkeeping; the timed steps use synthetic tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)).save(path)
        rows.append(f"{path},c{i % 2}\n")
    csv = folder / "list.csv"
    csv.write_text("path,label\n" + "".join(rows))
    return csv


def make_trainers(args, root: Path):
    csv = _tiny_dataset(root / "data", 2)
    common = dict(data=str(csv), model=args.model, pretrained=args.pretrained, device=args.device,
                  precision=args.precision,
                  progress=False, epochs=10_000, drop_last=False)
    sup = SupervisedTrainer(make_config("supervised", out=str(root / "sup"), batch_size=args.batch, **common))
    dino = DinoTrainer(make_config("dino", out=str(root / "dino"), batch_size=args.dino_batch,
                                   local_crops_number=args.local_crops, out_dim=args.dino_out_dim, **common))
    return sup, dino


def bench(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = str(device)
    results: dict = {"model": args.model, "device": str(device), "threads": torch.get_num_threads(),
                     "precision": args.precision, "rows": []}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        sup, dino = make_trainers(args, Path(tmp))
    size = sup.backbone.image_size
    g, l = dino.global_size, dino.local_size
    results.update(image_size=size, global_size=g, local_size=l,
                   trainable_adapter_params=sum(p.numel() for p in dino.student_params))

    def row(name, seconds, images, **extra):
        r = {"name": name, "ms_per_step": 1000 * seconds, "images_per_s": images / seconds, **extra}
        results["rows"].append(r)
        print(f"{name:<44} {1000 * seconds:9.1f} ms/step {images / seconds:9.1f} img/s"
              + "".join(f"  {k}={v:.3g}" if isinstance(v, float) else f"  {k}={v}" for k, v in extra.items()),
              flush=True)

    gen = torch.Generator().manual_seed(0)
    B = args.batch
    x = torch.randn(B, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 2, (B,), generator=gen)
    model = sup.model

    def frozen_forward():
        with torch.no_grad(), sup.autocast(), adapters_enabled(model, False):
            model.visual.eval()
            model.visual(x)

    def corrected_forward():
        with torch.no_grad(), sup.autocast():
            model.visual(x)

    step = iter(range(10**9))

    def sup_step():
        sup.student.train()
        sup.train_step((x, y), 0, sup.scheduled(next(step)))

    print(f"# {args.model} on {device} (threads {torch.get_num_threads()}, precision {args.precision}), image {size}px, "
          f"DINO crops 2x{g} + {args.local_crops}x{l}", flush=True)
    D = args.dino_batch
    crops = [torch.randn(D, 3, g, g, generator=gen).to(device) for _ in range(2)]
    crops += [torch.randn(D, 3, l, l, generator=gen).to(device) for _ in range(args.local_crops)]
    labels = torch.zeros(D, dtype=torch.long)

    def dino_frozen():
        with torch.no_grad(), dino.autocast(), adapters_enabled(dino.model, False):
            dino.student.visual.eval()
            for c in (torch.cat(crops[:2]), torch.cat(crops[2:]) if args.local_crops else None):
                if c is not None:
                    dino.student.visual(c)

    dstep = iter(range(10**9))

    def dino_step():
        dino.student.train()
        dino.train_step((crops, labels), 0, dino.scheduled(next(dstep)))

    fns = {"frozen": frozen_forward, "corrected": corrected_forward, "sup": sup_step,
           "dino_frozen": dino_frozen, "dino": dino_step}
    mem = {}
    if device.type == "cuda":  # peak memory of each step on its own (weights of all models included)
        for name, fn in fns.items():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            mem[name] = {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    t = measure(fns, args.steps, args.warmup, device)
    row(f"frozen forward (original stream) B={B}", t["frozen"], B, **mem.get("frozen", {}))
    row(f"frozen forward (corrected stream) B={B}", t["corrected"], B, **mem.get("corrected", {}))
    row(f"supervised train step B={B}", t["sup"], B, x_frozen_forward=t["sup"] / t["frozen"], **mem.get("sup", {}))
    row(f"frozen forward, same multi-crop batch B={D}", t["dino_frozen"], D, **mem.get("dino_frozen", {}))
    row(f"DINO train step B={D} (out_dim {args.dino_out_dim})", t["dino"], D,
        x_frozen_forward=t["dino"] / t["dino_frozen"], **mem.get("dino", {}))

    if not args.skip_transforms:
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
        n = args.transform_images
        ds_sup, ds_dino = sup.transform, dino.transform
        with torch.random.fork_rng(devices=[]):
            for name, t in (("transforms: eval (supervised), 1 core", ds_sup),
                            ("transforms: multi-crop (DINO), 1 core", ds_dino)):
                def run():
                    for i in range(n):
                        torch.manual_seed(sample_seed(0, 0, i))
                        t(img)
                sec = timeit(run, 1, 1, torch.device("cpu"))
                results["rows"].append({"name": name, "images_per_s": n / sec})
                print(f"{name:<44} {'':>17} {n / sec:9.1f} img/s (500x375 source)", flush=True)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="fp32 (the paper) or bf16 autocast, as `clipimo train --precision`")
    p.add_argument("--batch", type=int, default=8, help="supervised batch (paper: 128)")
    p.add_argument("--dino-batch", type=int, default=2, help="DINO batch per process (paper: 40)")
    p.add_argument("--local-crops", type=int, default=10)
    p.add_argument("--dino-out-dim", type=int, default=65536)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--transform-images", type=int, default=20)
    p.add_argument("--skip-transforms", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
