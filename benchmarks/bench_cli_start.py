"""Start-up time of the command line against ``python -c "import torch"`` (issue 12 benchmark).

Each command runs in a fresh interpreter (``python -m clipimo ...``), best of ``--repeats`` runs
(the CPU may be shared), next to the same interpreter importing torch, the cost every command paid
before the lazy imports. Prints figures; timings are not asserted (the test suite checks instead
that help and version import neither torch nor open_clip).

    PYTHONPATH=src python benchmarks/bench_cli_start.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
CASES = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch" (baseline)': ["-c", "import torch"],
    "clipimo --version": ["-m", "clipimo", "--version"],
    "clipimo --help": ["-m", "clipimo", "--help"],
    "clipimo evaluate --help": ["-m", "clipimo", "evaluate", "--help"],
    "clipimo train dino --help": ["-m", "clipimo", "train", "dino", "--help"],
}


def best_time(args: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures = {name: best_time(argv, args.repeats) for name, argv in CASES.items()}
    baseline = figures['python -c "import torch" (baseline)']
    print(f"best of {args.repeats} runs, {os.cpu_count()} CPU(s)")
    for name, seconds in figures.items():
        print(f"{name:<40} {seconds:7.3f} s   {seconds / baseline:6.2f} x torch import")


if __name__ == "__main__":
    main()
