"""Supervised training: learns a toy task, touches only adapters + head, resumes bitwise, exports."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY
from test_train_utils import assert_same_tensors, read_tensors, tiny_config, write_csv

from clipimo import adapters_enabled, load_adapters, load_clip
from clipimo.errors import ClipimoError
from clipimo.model.adapter import read_adapter_file
from clipimo.train import SupervisedTrainer, read_checkpoint, read_metrics, train_supervised
from clipimo.train.checkpoints import latest_checkpoint

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("sup"), n=24, n_classes=3)


def test_loss_falls_and_only_adapters_and_head_change(data, tmp_path):
    cfg = tiny_config("supervised", data, tmp_path / "run", epochs=5, lr=2e-2, batch_size=8)
    trainer = SupervisedTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.student.head.state_dict().items()}
    result = trainer.run()
    assert result.status == "finished" and result.step == 15 == result.total_steps
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 15
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert {"step", "loss", "lr", "images_per_s", "acc", "epoch"} <= set(record) and record["lr"] == 2e-2
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".adapter." in k for k in changed), changed
    assert any(".adapter.up." in k for k in changed) and any(".adapter.down." in k for k in changed)
    assert all(not torch.equal(head_before[k], v) for k, v in trainer.student.head.state_dict().items())


def test_resume_is_bitwise_an_uninterrupted_run(data, tmp_path):
    kw = dict(epochs=2, batch_size=8, checkpoint_every=2, keep_checkpoints=9, dropout=0.2)  # dropout: RNG matters
    full = train_supervised(tiny_config("supervised", data, tmp_path / "full", **kw))
    assert full.status == "finished" and full.step == 6

    part = train_supervised(tiny_config("supervised", data, tmp_path / "part", max_steps=4, **kw))
    assert part.status == "stopped" and part.step == 4 and part.export_path is None
    assert not (tmp_path / "part" / "adapter.safetensors").exists()
    # a "killed" run: continue from the step-2 checkpoint (mid-epoch), recomputing steps 3-4
    step2 = tmp_path / "part" / "checkpoints" / "step_00000002.safetensors"
    assert step2.is_file() and latest_checkpoint(tmp_path / "part").name == "step_00000004.safetensors"
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copy(step2, killed / "checkpoints" / step2.name)
    (killed / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": step2.name}))
    shutil.copy(tmp_path / "part" / "metrics.jsonl", killed / "metrics.jsonl")

    resumed = train_supervised(tiny_config("supervised", data, tmp_path / "part", **kw))  # resume auto
    again = train_supervised(tiny_config("supervised", data, killed, **kw))
    assert resumed.status == again.status == "finished" and resumed.step == again.step == 6
    reference = read_tensors(tmp_path / "full" / "adapter.safetensors")
    assert_same_tensors(read_tensors(tmp_path / "part" / "adapter.safetensors"), reference)
    assert_same_tensors(read_tensors(killed / "adapter.safetensors"), reference)
    # optimiser state and head too
    t_full, _ = read_checkpoint(latest_checkpoint(tmp_path / "full"))
    t_part, _ = read_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert_same_tensors({k: v for k, v in t_full.items() if not k.startswith("rng.")},
                        {k: v for k, v in t_part.items() if not k.startswith("rng.")})
    # the metrics log of the resumed runs equals the uninterrupted one's (timings aside)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("images_per_s", "step_time_s")} for r in rs]
    ref_log = strip(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    assert strip(read_metrics(tmp_path / "part" / "metrics.jsonl")) == ref_log
    assert strip(read_metrics(killed / "metrics.jsonl")) == ref_log

    with pytest.raises(ClipimoError, match="settings differ.*lr"):
        train_supervised(tiny_config("supervised", data, tmp_path / "part", lr=1e-3, **kw))


def test_export_loads_and_changes_the_corrected_stream_only(data, tmp_path):
    cfg = tiny_config("supervised", data, tmp_path / "run", epochs=1, export=str(tmp_path / "a.safetensors"))
    result = train_supervised(cfg)
    assert result.export_path == tmp_path / "a.safetensors"
    tensors, meta = read_adapter_file(result.export_path)
    assert meta["training"]["method"] == "supervised" and meta["training"]["steps"] == 3
    assert meta["training"]["config"]["lr"] == 8e-3 and meta["config"]["scale"] == 0.03
    assert meta["backbone"]["model"] == TINY and meta["training"]["random_init_backbone"] is True
    assert all(k.startswith("resblocks.") for k in tensors)

    plain = load_clip(TINY).model
    bb = load_clip(TINY)
    load_adapters(bb.model, result.export_path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = plain.encode_image(x)
        with adapters_enabled(bb.model, False):
            assert torch.equal(bb.model.encode_image(x), reference)
        corrected = bb.model.encode_image(x)
        text = bb.tokenizer(["a photo"])
        assert torch.equal(bb.model.encode_text(text), plain.encode_text(text))
    assert (corrected - reference).abs().max() > 1e-6


def test_command_line(data, tmp_path, capsys):
    from clipimo.cli.app import main

    y = tmp_path / "run.yaml"
    y.write_text(f"model: {TINY}\ndevice: cpu\nbatch_size: 12\nprogress: false\n")
    out = tmp_path / "cli"
    assert main(["train", "supervised", "--config", str(y), "--data", str(data), "--out", str(out),
                 "--max-steps", "1"]) == 0
    printed = capsys.readouterr()
    assert "stopped at step 1/2" in printed.err and "stopped" not in printed.out
    # continue with the settings the run recorded
    assert main(["train", "supervised", "--config", str(out / "config.yaml")]) == 0
    printed = capsys.readouterr()
    assert "resuming from" in printed.err and "resuming" not in printed.out
    assert read_adapter_file(out / "adapter.safetensors")[1]["training"]["steps"] == 2
    assert main(["train", "supervised", "--config", str(y), "--data", str(tmp_path / "nope.csv"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no such CSV file or folder" in capsys.readouterr().err


def test_last_partial_batch_is_dropped_by_default(data, tmp_path):
    """24 images in batches of 10: the paper's loader gives 2 steps per epoch, not 3."""
    trainer = SupervisedTrainer(tiny_config("supervised", data, tmp_path / "run", epochs=1, batch_size=10))
    assert trainer.steps_per_epoch == 2 and trainer.cfg.dropout == 0.1 and not trainer.amp
    assert sorted(i for batch in trainer.batches.batches(0) for i, _ in batch) != list(range(24))
    assert all(len(batch) == 10 for batch in trainer.batches.batches(0))
    kept = SupervisedTrainer(tiny_config("supervised", data, tmp_path / "all", batch_size=10, drop_last=False))
    assert kept.steps_per_epoch == 3
    assert SupervisedTrainer(tiny_config("supervised", data, tmp_path / "bf", precision="bf16")).amp
