"""The CPU thread policy: passive OpenMP waits and threads capped to the process's cores, set
before torch loads, user settings kept."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipimo.cli.app import main
from clipimo.utils.threads import apply_thread_policy

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_policy_fills_only_what_the_user_left_unset():
    cores = str(len(os.sched_getaffinity(0)))
    env = {"OMP_NUM_THREADS": "7"}
    assert apply_thread_policy(env) == {"OMP_WAIT_POLICY": "PASSIVE", "MKL_NUM_THREADS": cores}
    assert env == {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "PASSIVE", "MKL_NUM_THREADS": cores}
    assert apply_thread_policy(env) == {}  # a second call changes nothing


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_torch_loaded_after_the_policy_uses_the_cores_the_process_may_run_on():
    """A process pinned to one core gets one torch thread, and the passive wait policy reaches torch."""
    code = ("import os; from clipimo.utils.threads import apply_thread_policy; apply_thread_policy(); "
            "import torch; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    env["PYTHONPATH"] = SRC
    first = min(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, {first}), check=True)
    assert proc.stdout.split() == ["1", "PASSIVE"]


def test_cli_applies_the_policy_before_any_command(monkeypatch):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    monkeypatch.setattr(os, "environ", environ)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert environ["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))
