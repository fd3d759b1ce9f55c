"""Prepared GPU check for adapter training (issue 5): run it on a lent GPU machine, one command.

    python benchmarks/gpu_train_check.py --json $OUT/gpu_train.json            # ~2-4 min on one H100
    python benchmarks/gpu_train_check.py --device cpu --quick --torchrun 2     # CPU smoke (gloo)

What it does (each part prints one block; failures are collected and the exit code is 1):
 1. throughput, bf16 autocast: supervised step (paper batch 128) and DINO step (40 per GPU, 2x224 +
    10x96 crops, 65536-d head) against a frozen forward on the same batch; peak memory;
 2. bf16 vs fp32: one supervised and one DINO loss/gradient on the same batch agree;
 3. end to end on generated images through ``train_supervised`` / ``train_dino`` (DataLoader
    workers, pinned memory, checkpoints, export), the export loads and changes the corrected
    stream only; a stopped-and-resumed run against an uninterrupted one (bitwise flag + max diff);
 4. with 2+ GPUs (or ``--torchrun N``): ``torchrun -m clipimo.cli.app train dino`` over N
    processes (nccl on GPU, gloo on CPU) completes and exports.
Random-init weights throughout (no downloads here); speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clipimo import adapters_enabled, load_adapters, load_clip
from clipimo.model.adapter import read_adapter_file
from clipimo.train import DinoTrainer, SupervisedTrainer, make_config, train_dino, train_supervised

TINY = "clipimo-tiny-vit"
FAILURES: list[str] = []
REPORT: dict = {}


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    REPORT.setdefault("checks", {})[name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        FAILURES.append(name)


def write_images(folder: Path, n: int, n_classes: int = 4, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % n_classes
        base = np.array([40 + 50 * label, 220 - 50 * label, 90 + 20 * (i % 3)])
        px = np.clip(base + rng.normal(0, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
        path = folder / "imgs" / f"{i:04d}.png"
        Image.fromarray(px).save(path)
        rows.append(f"{path},class{label}\n")
    csv = folder / "list.csv"
    csv.write_text("path,label\n" + "".join(rows))
    return csv


def throughput_argv(args) -> list[str]:
    """bench_train.py's command line for part 1: bf16 autocast on CUDA, fp32 on CPU."""
    return ["--model", args.model, "--device", args.device,
            "--precision", "bf16" if args.device.startswith("cuda") else "fp32",
            "--batch", str(args.batch), "--dino-batch", str(args.dino_batch),
            "--dino-out-dim", str(args.dino_out_dim), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--transform-images", "40"]


def part_throughput(args) -> None:
    import bench_train

    print("\n== 1. throughput (bf16 autocast when on CUDA)", flush=True)
    REPORT["throughput"] = bench_train.bench(bench_train.parse_args(throughput_argv(args)))


def _grads(trainer) -> torch.Tensor:
    params = trainer.student_params if hasattr(trainer, "student_params") else \
        [p for p in trainer.student.parameters() if p.requires_grad]
    return torch.cat([p.grad.detach().float().flatten() for p in params if p.grad is not None])


def part_precision(args, tmp: Path) -> None:
    print("\n== 2. bf16 autocast vs fp32 on the same batch", flush=True)
    csv = write_images(tmp / "prec", 8)
    gen = torch.Generator().manual_seed(0)
    for method in ("supervised", "dino"):
        results = {}
        for precision in ("fp32", "bf16"):
            kw = dict(data=str(csv), out=str(tmp / f"prec_{method}_{precision}"), model=args.model,
                      device=args.device, precision=precision, progress=False, dropout=0.0, epochs=100,
                      batch_size=4, drop_last=False)
            if method == "dino":
                kw.update(out_dim=args.dino_out_dim, local_crops_number=4)
            trainer = (SupervisedTrainer if method == "supervised" else DinoTrainer)(make_config(method, **kw))
            # one fixed batch; one step with lr 0 so only loss and gradients matter
            trainer.student.train()
            trainer.schedules["lr"][:] = 0.0
            gen.manual_seed(1)
            if method == "supervised":
                s = trainer.backbone.image_size
                batch = (torch.randn(4, 3, s, s, generator=gen), torch.arange(4) % 2)
                if trainer.student.head.out_features < 2:
                    batch = (batch[0], torch.zeros(4, dtype=torch.long))
                metrics = trainer.train_step(batch, 0, trainer.scheduled(0))
            else:
                g_, l_ = trainer.global_size, trainer.local_size
                crops = [torch.randn(4, 3, g_, g_, generator=gen) for _ in range(2)]
                crops += [torch.randn(4, 3, l_, l_, generator=gen) for _ in range(4)]
                metrics = trainer.train_step((crops, torch.zeros(4)), 0, trainer.scheduled(0))
            results[precision] = (float(metrics["loss"]), _grads(trainer))
        (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
        cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
        rel = abs(l16 - l32) / max(abs(l32), 1e-8)
        check(f"{method}: bf16 loss close to fp32", rel < 0.05, f"fp32 {l32:.5f} bf16 {l16:.5f} rel {rel:.2e}")
        check(f"{method}: bf16 gradient direction", cos > 0.95, f"cosine {cos:.4f}")
        REPORT.setdefault("precision", {})[method] = {"loss_fp32": l32, "loss_bf16": l16, "grad_cosine": cos}


def _tensors(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def part_end_to_end(args, tmp: Path) -> None:
    print("\n== 3. end to end on generated images (tiny model), resume", flush=True)
    csv = write_images(tmp / "e2e", 48)
    device = args.device
    for method, fn, kw in (
        ("supervised", train_supervised, dict(batch_size=8, epochs=2, lr=1e-2)),
        ("dino", train_dino, dict(batch_size=8, epochs=2, out_dim=1024, hidden_dim=256, bottleneck_dim=64,
                                  warmup_epochs=1, lr=0.05, local_crops_number=4)),
    ):
        common = dict(data=str(csv), model=TINY, device=device, progress=False, checkpoint_every=2, workers=2,
                      keep_checkpoints=20, **kw)
        t = time.perf_counter()
        full = fn(make_config(method, out=str(tmp / f"{method}_full"), **common))
        wall = time.perf_counter() - t
        check(f"{method}: run finishes", full.status == "finished", f"{full.step} steps in {wall:.1f}s, "
              f"last loss {full.last_metrics.get('loss', float('nan')):.4f}")
        tensors, meta = read_adapter_file(full.export_path)
        check(f"{method}: export metadata", meta["training"]["method"] == method, json.dumps(meta["config"]))
        plain = load_clip(TINY, device=device).model
        bb = load_clip(TINY, device=device)
        load_adapters(bb.model, full.export_path)
        x = torch.randn(4, 3, 32, 32, device=device)
        with torch.no_grad():
            ref = plain.encode_image(x)
            with adapters_enabled(bb.model, False):
                same = torch.equal(bb.model.encode_image(x), ref)
            moved = float((bb.model.encode_image(x) - ref).abs().max())
        check(f"{method}: exported adapter changes the corrected stream only", same and moved > 0,
              f"original bitwise {same}, corrected max change {moved:.3g}")
        part = fn(make_config(method, out=str(tmp / f"{method}_part"), max_steps=3, **common))
        resumed = fn(make_config(method, out=str(tmp / f"{method}_part"), **common))
        a, b = _tensors(full.export_path), _tensors(resumed.export_path)
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        bitwise = all(torch.equal(a[k], b[k]) for k in a)
        check(f"{method}: stopped at 3 + resumed == uninterrupted", part.status == "stopped" and diff < 1e-3,
              f"bitwise {bitwise}, max diff {diff:.3g}")
        REPORT.setdefault("resume", {})[method] = {"bitwise": bitwise, "max_diff": diff}


def part_torchrun(args, tmp: Path, nproc: int) -> None:
    print(f"\n== 4. torchrun, {nproc} processes", flush=True)
    csv = write_images(tmp / "ddp", 32)
    out = tmp / "ddp_run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "clipimo.cli.app", "train", "dino", "--model", TINY, "--data", str(csv), "--out", str(out),
           "--device", "cuda" if args.device.startswith("cuda") else "cpu", "--batch-size", "4", "--epochs", "2",
           "--out-dim", "1024", "--hidden-dim", "256", "--bottleneck-dim", "64", "--local-crops-number", "4",
           "--no-progress", "--log-every", "1", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.torchrun_timeout, env=env)
    wall = time.perf_counter() - t
    tail = (proc.stdout + proc.stderr)[-1500:]
    ok = proc.returncode == 0 and (out / "adapter.safetensors").is_file()
    check(f"torchrun x{nproc}: train dino completes and exports", ok, f"rc {proc.returncode}, {wall:.1f}s")
    if not ok:
        print(tail)
    else:
        meta = read_adapter_file(out / "adapter.safetensors")[1]
        check(f"torchrun x{nproc}: world size recorded", meta["training"]["world_size"] == nproc,
              f"global batch {meta['training']['global_batch']}")
        lines = (out / "metrics.jsonl").read_text().splitlines()
        check(f"torchrun x{nproc}: one metrics line per step", len(lines) == meta["training"]["steps"],
              json.loads(lines[-1]).__repr__()[:160])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="ViT-B-16", help="backbone of the throughput/precision parts")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dino-batch", type=int, default=40)
    p.add_argument("--dino-out-dim", type=int, default=65536)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny model and batches (CPU smoke test of this script)")
    p.add_argument("--torchrun", type=int, default=-1, help="processes for part 4 (-1: number of GPUs if >= 2; 0: skip)")
    p.add_argument("--torchrun-timeout", type=int, default=240)
    p.add_argument("--skip", default="", help="comma list of parts to skip: 1,2,3,4")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.dino_batch, args.dino_out_dim, args.steps, args.warmup = TINY, 16, 4, 4096, 3, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: run with --device cpu --quick for a smoke test", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        REPORT["gpu"] = torch.cuda.get_device_name(0)
        REPORT["gpus"] = torch.cuda.device_count()
        print(f"GPU: {REPORT['gpu']} x{REPORT['gpus']}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    REPORT.update(torch=torch.__version__, device=args.device, model=args.model)
    skip = set(filter(None, args.skip.split(",")))
    nproc = args.torchrun if args.torchrun >= 0 else (torch.cuda.device_count() if args.device.startswith("cuda") else 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parts = [("1", lambda: part_throughput(args)), ("2", lambda: part_precision(args, tmp)),
                 ("3", lambda: part_end_to_end(args, tmp))]
        if nproc >= 2:
            parts.append(("4", lambda: part_torchrun(args, tmp, nproc)))
        else:
            print("\n== 4. torchrun: skipped (fewer than 2 GPUs; --torchrun N to force)")
        for key, fn in parts:
            if key in skip:
                continue
            try:
                fn()
            except Exception as err:  # keep going: report every part
                traceback.print_exc()
                check(f"part {key} raised", False, repr(err))
    REPORT["wall_s"] = time.perf_counter() - t0
    REPORT["failures"] = FAILURES
    print(f"\n{len(FAILURES)} failure(s) in {REPORT['wall_s']:.0f}s" + (f": {FAILURES}" if FAILURES else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(REPORT, indent=2, default=str))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
