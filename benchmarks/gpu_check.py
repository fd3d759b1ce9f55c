"""GPU readiness in one command (issue 23): one line per figure, within 8 minutes on one GPU.

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick # CPU smoke run of this script (tests)

1. Feature throughput: images/s of the image encoder (clipimo's corrected stream, adapters on)
   in fp32 and in bf16 autocast, random-init weights (speed does not depend on them).
2. The ImageNet 16-shot cell (1,000 classes x 16 shots, 10 views, 10,000 val, 50,000 test; synthetic
   features) with every registered method on the device, seconds per method; then every method
   on a smaller cell (``--compare-classes``) on the device and on CPU: the chosen points must be
   the same (the accuracies within ``--compare-tol`` points).
3. DDP: ``train dino`` under torchrun over every GPU (``gpu_train_check.py``'s part 4) completes.
Failures are listed at the end and make the exit code 1.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clipimo.features.file import synthetic_features
from clipimo.methods.evaluate import run_methods
from clipimo.methods.registry import METHODS

FAILURES: list[str] = []
TINY = "clipimo-tiny-vit"


def line(name: str, value: str, ok: bool = True) -> None:
    print(f"{name:48s} {value}{'' if ok else '  FAIL'}", flush=True)
    if not ok:
        FAILURES.append(name)


def part_throughput(args) -> None:
    from clipimo import adapters_enabled, add_adapters, load_clip

    device = torch.device(args.device)
    model = load_clip(args.model, None, device=device).model
    add_adapters(model)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    x = torch.randn(args.batch, 3, size, size, device=device)
    for precision in ("fp32", "bf16"):
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with adapters_enabled(model, True), torch.inference_mode(), amp:
            model.encode_image(x)  # warm-up
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.reps):
                model.encode_image(x)
            _sync(device)
        rate = args.reps * args.batch / (time.perf_counter() - start)
        line(f"features {args.model} {precision} (batch {args.batch})", f"{rate:,.0f} images/s")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def part_cell(args) -> None:
    methods = list(METHODS)
    big = synthetic_features(args.classes, args.shots, args.val, args.test, 512, views=10)
    for name in methods:
        start = time.perf_counter()
        try:
            run_methods(big, [name], device=args.device)
            line(f"cell {args.classes}x{args.shots} {name} on {args.device}", f"{time.perf_counter() - start:.1f} s")
        except Exception as err:  # noqa: BLE001 - every method reports, then the exit code says
            line(f"cell {args.classes}x{args.shots} {name} on {args.device}", f"{type(err).__name__}: {err}", False)
    del big
    small = synthetic_features(args.compare_classes, args.shots, 10 * args.compare_classes,
                               10 * args.compare_classes, 512, views=10, seed=1)
    here, cpu = run_methods(small, methods, device=args.device), run_methods(small, methods, device="cpu")
    for name in methods:
        same = here[name].hparams == cpu[name].hparams and \
            abs(here[name].test_acc - cpu[name].test_acc) <= args.compare_tol
        line(f"same choice as CPU, {args.compare_classes} classes: {name}",
             f"{here[name].hparams} test {here[name].test_acc:.2f} vs {cpu[name].test_acc:.2f}", same)


def part_ddp(args) -> None:
    import gpu_train_check

    nproc = torch.cuda.device_count() if args.device.startswith("cuda") else 2
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        before = len(gpu_train_check.FAILURES)
        gpu_train_check.part_torchrun(SimpleNamespace(device=args.device, torchrun_timeout=240), Path(tmp), nproc)
        ok = len(gpu_train_check.FAILURES) == before
        line(f"DDP train dino, {nproc} processes", f"{time.perf_counter() - start:.1f} s", ok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--val", type=int, default=10_000)
    p.add_argument("--test", type=int, default=50_000)
    p.add_argument("--compare-classes", type=int, default=50)
    p.add_argument("--compare-tol", type=float, default=0.0, help="test-accuracy points allowed between devices")
    p.add_argument("--skip", default="", help="comma list of parts to skip: 1,2,3")
    p.add_argument("--quick", action="store_true", help="tiny model and cell (a CPU smoke run of this script)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.reps, args.classes, args.shots, args.val, args.test, args.compare_classes = \
            TINY, 2, 1, 4, 1, 8, 8, 3
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu --quick for a smoke test", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {args.device} ({where}), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()
    for key, part in (("1", part_throughput), ("2", part_cell), ("3", part_ddp)):
        if key not in skip:
            part(args)
    line("total", f"{time.perf_counter() - start:.0f} s", True)
    if FAILURES:
        print("FAILED: " + "; ".join(FAILURES), flush=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
