"""`clipimo features` and `clipimo run` under torchrun: two gloo processes (WORLD_SIZE/RANK/MASTER_* as
torchrun sets them) split the cache shards and rank 0 writes exactly what one process writes."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY, make_images

from clipimo import add_adapters, load_clip, save_adapters
from clipimo.cli.app import main
from clipimo.cli.model_args import make_extractor
from clipimo.errors import ClipimoError
from clipimo.features.extractor import FeatureExtractor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_encodes(log: str) -> None:
    """Log the size of every shard this process encodes (a cache hit encodes nothing)."""
    encode = getattr(FeatureExtractor._encode, "__wrapped__", FeatureExtractor._encode)

    def recording(self, items, *args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{len(items)}\n")
        return encode(self, items, *args, **kwargs)

    recording.__wrapped__ = encode
    FeatureExtractor._encode = recording


def _worker(rank: int, world: int, port: int, commands: list[list[str]], logs: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    for i, argv in enumerate(commands):
        _record_encodes(os.path.join(logs, f"cmd{i}_rank{rank}.txt"))
        assert main(argv) == 0


def _encoded(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


def test_two_ranks_write_what_one_process_writes(tmp_path):
    items = make_images(tmp_path / "imgs", 10)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{'abc'[y]}\n" for p, y in items))
    bb = load_clip(TINY)
    add_adapters(bb.model)
    with torch.no_grad():
        for block in bb.model.visual.transformer.resblocks:
            block.adapter.up.weight.normal_(0, 0.3)
    adapter = tmp_path / "adapter.safetensors"
    save_adapters(bb.model, adapter)

    def features(name: str) -> list[str]:
        return ["features", "--model", TINY, "--images", str(csv), "--adapter", str(adapter), "--passes", "2",
                "--shard-size", "3", "--workers", "0", "--no-progress", "--cache-dir", str(tmp_path / f"cache_{name}"),
                "--out", str(tmp_path / f"{name}.npz")]

    task = tmp_path / "task"  # a custom few-shot task: 3 classes, train/val/test folders
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        for path, label in make_images(tmp_path / f"raw_{split}", n, seed=n):
            (task / split / "abc"[label]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, task / split / "abc"[label])

    def grid(name: str) -> list[str]:
        return ["run", "--root", str(tmp_path), "--datasets", str(task), "--shots", "1,2", "--seeds", "1",
                "--methods", "zs,tip,tip-imo", "--augment-passes", "2", "--model", TINY, "--adapter", str(adapter),
                "--shard-size", "2", "--workers", "0", "--no-progress", "--cache-dir", str(tmp_path / f"grid_{name}"),
                "--out", str(tmp_path / f"run_{name}")]

    logs = tmp_path / "logs"
    logs.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), [features("ddp"), grid("ddp")], str(logs)), nprocs=2, join=True)
    # shards of 3, 3, 3, 1 images: rank 0 encodes shards 0 and 2, rank 1 shards 1 and 3, rank 0 reads the rest
    assert _encoded(logs / "cmd0_rank0.txt") == [3, 3]
    assert _encoded(logs / "cmd0_rank1.txt") == [3, 1]
    assert len(list((tmp_path / "cache_ddp" / "features").rglob("*.safetensors"))) == 4
    assert _encoded(logs / "cmd1_rank1.txt")  # the grid's shards were shared out too

    assert main(features("single")) == 0
    with np.load(tmp_path / "ddp.npz") as ddp, np.load(tmp_path / "single.npz") as single:
        assert sorted(ddp.files) == sorted(single.files)
        assert "feats_corrected" in ddp.files
        for key in single.files:
            assert np.array_equal(ddp[key], single[key]), key  # bitwise, metadata included
        assert not np.array_equal(single["feats"], single["feats_corrected"])

    assert main(grid("single")) == 0
    ddp_cells = json.loads((tmp_path / "run_ddp" / "results.json").read_text())["cells"]
    assert ddp_cells == json.loads((tmp_path / "run_single" / "results.json").read_text())["cells"]
    assert len(ddp_cells) == 2 and "tip-imo" in ddp_cells[0]["methods"]


def test_commands_that_do_not_shard_refuse_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ClipimoError, match="clipimo shift runs as one process; under torchrun use `clipimo features`"):
        make_extractor(argparse.Namespace(command="shift"))


def test_a_rank_that_left_its_group_works_alone_and_keeps_its_rank(monkeypatch):
    """After the ranks' shared encoding, rank 0 goes on alone (imagepca's statistics, the evaluation):
    nothing may wait on the destroyed group any more."""
    import torch.distributed as dist

    from clipimo.utils.distributed import DistEnv

    def no_group():
        raise AssertionError("waited on a process group that is gone")

    monkeypatch.setattr(dist, "barrier", no_group)
    for rank in (0, 1):
        env = DistEnv(rank=rank, world_size=2, owns_group=True)
        env.cleanup()
        assert not env.distributed and env.rank == rank and env.is_main == (rank == 0)
        env.barrier()
    joined = DistEnv(rank=1, world_size=2)  # a group someone else owns is not this env's to leave
    joined.cleanup()
    assert joined.distributed
