"""Two gloo processes (the torchrun code path: WORLD_SIZE/RANK/MASTER_* in the environment)
train like one process on the concatenated batch, and stay identical across ranks."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file
from test_train_utils import read_tensors, tiny_config, write_csv

from clipimo.model.adapter import adapter_state
from clipimo.train import DinoTrainer, SupervisedTrainer, make_config

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINERS = {"supervised": SupervisedTrainer, "dino": DinoTrainer}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, runs: list[tuple[str, dict]], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from clipimo.utils.distributed import setup_distributed

    env = setup_distributed("cpu")
    try:
        for method, values in runs:
            trainer = TRAINERS[method](make_config(method, **values), env)
            result = trainer.run()
            assert result.status == "finished"
            module = trainer.export_module()
            save_file(adapter_state(module), os.path.join(out, f"{method}_rank{rank}.safetensors"))
            if method == "dino":
                save_file({"center": trainer.dino_loss.center.contiguous()},
                          os.path.join(out, f"center_rank{rank}.safetensors"))
    finally:
        env.cleanup()


def test_two_process_ddp_matches_one_process_on_the_global_batch(tmp_path):
    data = write_csv(tmp_path, n=16, n_classes=2)
    common = dict(dropout=0.0, epochs=1)  # no dropout: the two layouts draw different masks
    runs = {
        "supervised": dict(batch_size=4, lr=1e-2, **common),
        "dino": dict(batch_size=2, lr=0.05, warmup_epochs=0, momentum_teacher=0.9, **common),
    }
    ddp_runs = [(m, tiny_config(m, data, tmp_path / f"ddp_{m}", **kw).to_dict()) for m, kw in runs.items()]
    mp.spawn(_worker, args=(2, _free_port(), ddp_runs, str(tmp_path)), nprocs=2, join=True)

    for method, kw in runs.items():
        r0 = read_tensors(tmp_path / f"{method}_rank0.safetensors")
        r1 = read_tensors(tmp_path / f"{method}_rank1.safetensors")
        for k in r0:  # gradients were averaged: every rank took the same optimiser steps
            assert torch.equal(r0[k], r1[k]), (method, k)
        exported = read_tensors(tmp_path / f"ddp_{method}" / "adapter.safetensors")
        for k in r0:
            assert torch.equal(exported[k], r0[k])
        # one process on the concatenated (global) batch: the same result up to float rounding
        single_kw = {**kw, "batch_size": 2 * kw["batch_size"]}
        trainer = TRAINERS[method](tiny_config(method, data, tmp_path / f"single_{method}", **single_kw))
        assert trainer.run().status == "finished"
        single = adapter_state(trainer.export_module())
        assert any(single[k].abs().sum() > 0 for k in single if ".up." in k)
        for k in single:
            torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=2e-6, msg=f"{method} {k}")
        if method == "dino":  # the center is averaged over processes
            c0 = read_tensors(tmp_path / "center_rank0.safetensors")["center"]
            c1 = read_tensors(tmp_path / "center_rank1.safetensors")["center"]
            assert torch.equal(c0, c1)
            torch.testing.assert_close(c0, trainer.dino_loss.center, rtol=1e-4, atol=1e-6)
        ddp_log = (tmp_path / f"ddp_{method}" / "metrics.jsonl").read_text().splitlines()
        assert len(ddp_log) == trainer.total_steps
