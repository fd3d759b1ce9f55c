"""The CPU thread policy every command starts with, for machines shared with other work.

PyTorch's OpenMP pool by default spins idle threads between parallel regions and may size itself
to more cores than the process may use; on a busy machine the spinning threads compete with the
threads doing the work (and with other processes), which multiplies wall time and CPU time. The
policy: threads that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) and no more threads than the
cores this process may run on (``os.sched_getaffinity``). Variables the user set are left alone.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's or taskset's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity masks on this platform
        return os.cpu_count() or 1


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the policy's variables that ``environ`` (default ``os.environ``) does not already have and
    return those set. The variables act when torch loads; where it is loaded already, its intra-op
    pool is capped to the thread count instead (the wait policy then keeps torch's setting)."""
    env = os.environ if environ is None else environ
    cores = str(available_cores())
    chosen = {var: value for var, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("OMP_NUM_THREADS", cores),
                                            ("MKL_NUM_THREADS", cores)) if var not in env}
    env.update(chosen)
    torch = sys.modules.get("torch")
    if torch is not None and env is os.environ:
        limit = env["OMP_NUM_THREADS"]
        threads = int(limit) if limit.isdigit() and int(limit) > 0 else int(cores)
        if torch.get_num_threads() > threads:
            torch.set_num_threads(threads)
    return chosen
