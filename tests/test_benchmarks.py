"""The benchmark scripts run against the current API: every one imports, the training ones run (tiny model).

They are scripts, not part of the package, so nothing else notices when the API they call changes
(as ``amp`` -> ``precision`` did). Only that they run and report is checked, never their timings.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_train
        import gpu_train_check

        yield bench_train, gpu_train_check
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_train_runs_with_tiny_model(scripts, tmp_path, precision, capsys):
    bench_train, _ = scripts
    out = tmp_path / "train.json"
    assert bench_train.main(["--model", TINY, "--precision", precision, "--batch", "4", "--dino-batch", "2",
                             "--local-crops", "2", "--dino-out-dim", "256", "--steps", "1", "--warmup", "0",
                             "--skip-transforms", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == precision
    assert [r["name"].split(" B=")[0] for r in report["rows"]] == [
        "frozen forward (original stream)", "frozen forward (corrected stream)", "supervised train step",
        "frozen forward, same multi-crop batch", "DINO train step"]
    assert "DINO train step" in capsys.readouterr().out


def test_bench_train_has_no_amp_flag(scripts):
    bench_train, _ = scripts
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--amp", "auto"])


@pytest.mark.parametrize("device,precision", [("cpu", "fp32"), ("cuda", "bf16")])
def test_gpu_check_throughput_arguments_parse(scripts, device, precision):
    bench_train, check = scripts
    args = SimpleNamespace(model=TINY, device=device, batch=16, dino_batch=4, dino_out_dim=4096, steps=3, warmup=1)
    parsed = bench_train.parse_args(check.throughput_argv(args))
    assert (parsed.device, parsed.precision, parsed.batch) == (device, precision, 16)


def test_gpu_check_precision_part_on_cpu(scripts, tmp_path, monkeypatch):
    """Part 2 (fp32 vs bf16 on one batch) in its CPU form; parts 1, 3 and 4 are run by hand."""
    _, check = scripts
    monkeypatch.setattr(check, "FAILURES", [])
    monkeypatch.setattr(check, "REPORT", {})
    out = tmp_path / "check.json"
    rc = check.main(["--device", "cpu", "--quick", "--skip", "1,3", "--torchrun", "0",
                     "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report["failures"]
    assert set(report["precision"]) == {"supervised", "dino"}


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py")))
def test_every_benchmark_script_imports_against_the_current_api(name):
    """A name the library dropped (as ``cache.hits_at`` was) fails here, not on a user's GPU machine."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
    assert module.__file__ == str(BENCH / f"{name}.py")


def test_bench_sweep_quick_times_every_registered_method(capsys):
    """The sweep benchmark's method list is the registry's: a method added later is timed too."""
    from clipimo.methods.registry import CACHE_VARIANTS, METHODS

    sys.path.insert(0, str(BENCH))
    try:
        import bench_sweep

        report = bench_sweep.main(["--quick"])
    finally:
        sys.path.remove(str(BENCH))
    columns = set(report["method_seconds"])
    assert columns == {m for m in METHODS if m not in CACHE_VARIANTS} | {bench_sweep.SHARED}
    out = capsys.readouterr().out
    assert "projected 3-seed sweep" in out and all(f"\n{m} " in out for m in columns)


def bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        import importlib

        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_bench_sweep_estimate_sums_the_cost_model_without_running(capsys, monkeypatch):
    """``--estimate`` runs nothing (no features are drawn) and its totals are the cost model's own
    seconds, summed here by hand over the cells."""
    from clipimo.methods import cost

    bench_sweep = bench_module("bench_sweep")
    monkeypatch.setattr(bench_sweep, "synthetic_features", None)  # calling it would fail
    report = bench_sweep.main(["--estimate", "--datasets", "EuroSAT,ImageNet", "--shots", "1,16",
                               "--methods", "proker,tip,tipx"])
    want = 0.0
    for classes, val, test in (bench_sweep.DATASETS["EuroSAT"], bench_sweep.DATASETS["ImageNet"]):
        for shots in (1, 16):
            want += cost.seconds("proker", cost.Sizes(classes, classes * shots, val, test, 512, 10))
    assert report["cpu_s"]["proker"] == pytest.approx(want)
    assert set(report["cpu_s"]) == {"proker", bench_sweep.SHARED}
    assert report["cuda_s"]["proker"] < report["cpu_s"]["proker"] / 100
    out = capsys.readouterr().out
    assert "ESTIMATES" in out and "estimated 3-seed sweep over 4 cells" in out


def test_bench_ape_counts_match_the_previous_search(capsys):
    report = bench_module("bench_ape").main(["--classes", "12", "--shots", "2", "--val", "40", "--betas", "2"])
    assert report["identical"] is True
    assert report["floor_s"] > 0 and "cache terms alone" in capsys.readouterr().out


def test_gpu_check_help_and_refusal_without_cuda(capsys):
    """The GPU script parses and explains itself on a machine without a GPU (tests never need one)."""
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check

        with pytest.raises(SystemExit) as done:
            gpu_check.main(["--help"])
        assert done.value.code == 0 and "ImageNet 16-shot cell" in capsys.readouterr().out
        if not __import__("torch").cuda.is_available():
            assert gpu_check.main([]) == 2
            assert "--device cpu --quick" in capsys.readouterr().err
    finally:
        sys.path.remove(str(BENCH))
