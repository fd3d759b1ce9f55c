"""DINO training on the tiny model: one step's gradients, resume equivalence, teacher export."""
from __future__ import annotations

import copy

import pytest
import torch
from test_train_utils import assert_same_tensors, read_tensors, tiny_config, write_csv

from clipimo.model.adapter import read_adapter_file
from clipimo.train import DinoTrainer, read_checkpoint, read_metrics, train_dino
from clipimo.train.checkpoints import latest_checkpoint

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("dino"), n=16, n_classes=2)


def test_one_step_trains_adapters_only_and_moves_teacher_by_ema(data, tmp_path):
    cfg = tiny_config("dino", data, tmp_path / "run", batch_size=4, epochs=2, max_steps=1, momentum_teacher=0.5,
                      lr=0.5, warmup_epochs=0)
    trainer = DinoTrainer(cfg)
    assert (trainer.global_size, trainer.local_size) == (32, 16)
    assert trainer.transform.ncrops == 4 and trainer.dino_loss.ncrops == 4
    assert trainer.peak_lr == pytest.approx(0.5 * 4 / 256)
    assert all(".adapter." in n for n in trainer.trainable_names)
    assert not any(p.requires_grad for p in trainer.student.head.parameters())  # head frozen by default
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    student0 = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    teacher0 = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    result = trainer.run()
    assert result.status == "stopped" and result.step == 1
    assert all(p.grad is None for p in trainer.teacher.parameters())
    student1, teacher1 = trainer.student.state_dict(), trainer.teacher.state_dict()
    changed = {k for k in student0 if not torch.equal(student0[k], student1[k])}
    assert changed and all(".adapter." in k for k in changed)
    m = trainer.schedules["momentum"][0]
    assert m == pytest.approx(0.5)
    for k in teacher0:
        if k in changed:  # teacher = m * teacher + (1 - m) * student, for the trained tensors
            torch.testing.assert_close(teacher1[k], m * teacher0[k] + (1 - m) * student1[k])
        else:
            assert torch.equal(teacher1[k], teacher0[k]), k
    assert trainer.dino_loss.center.abs().sum() > 0  # center moved from zero


def test_resume_is_bitwise_and_the_teacher_is_exported(data, tmp_path):
    kw = dict(batch_size=4, epochs=2, checkpoint_every=3, warmup_epochs=1, warmup_teacher_temp_epochs=1,
              lr=0.05, momentum_teacher=0.9, keep_checkpoints=9)
    full = train_dino(tiny_config("dino", data, tmp_path / "full", **kw))
    assert full.status == "finished" and full.step == 8
    part = train_dino(tiny_config("dino", data, tmp_path / "part", max_steps=5, **kw))
    assert part.status == "stopped" and part.step == 5
    # drop the later checkpoints: resume from step 3 (mid-epoch 0), as after a kill
    cks = tmp_path / "part" / "checkpoints"
    assert read_checkpoint(cks / "step_00000004.safetensors")[1]["step_in_epoch"] == 0  # epoch end
    (cks / "step_00000005.safetensors").unlink()
    (cks / "step_00000004.safetensors").unlink()
    (cks / "latest.json").write_text('{"checkpoint": "step_00000003.safetensors"}')
    assert read_checkpoint(cks / "step_00000003.safetensors")[1]["step_in_epoch"] == 3
    resumed = train_dino(tiny_config("dino", data, tmp_path / "part", **kw))
    assert resumed.status == "finished" and resumed.step == 8

    ref = read_tensors(tmp_path / "full" / "adapter.safetensors")
    assert_same_tensors(read_tensors(tmp_path / "part" / "adapter.safetensors"), ref)
    t_full, meta = read_checkpoint(latest_checkpoint(tmp_path / "full"))
    t_part, _ = read_checkpoint(latest_checkpoint(tmp_path / "part"))
    assert_same_tensors({k: v for k, v in t_full.items() if not k.startswith("rng.")},
                        {k: v for k, v in t_part.items() if not k.startswith("rng.")})
    losses = lambda p: [r["loss"] for r in read_metrics(p / "metrics.jsonl")]
    assert losses(tmp_path / "part") == losses(tmp_path / "full")

    # the exported adapters are the teacher's, not the student's
    tensors, meta_file = read_adapter_file(tmp_path / "full" / "adapter.safetensors")
    assert meta_file["training"]["method"] == "dino" and meta_file["training"]["exported"] == "teacher"
    assert meta_file["config"]["scale"] == 0.1
    prefix = "visual.transformer."
    for name, t in tensors.items():
        i, rest = name.split(".")[1], ".".join(name.split(".")[2:])
        key = f"{prefix}resblocks.{i}.adapter.{rest}"
        assert torch.equal(t, t_full[f"teacher.{key}"]), name
    assert any(not torch.equal(t_full[f"teacher.{k}"], t_full[f"model.{k}"])
               for k in (k[len("teacher."):] for k in t_full if k.startswith("teacher.")))
    assert "dino.center" in t_full and meta["optimizer"]["param_groups"][1]["weight_decay"] == 0.0


def test_train_head_option(data, tmp_path):
    cfg = tiny_config("dino", data, tmp_path / "run", batch_size=8, epochs=2, train_head=True, freeze_last_layer=1,
                      warmup_epochs=0, lr=1.0)
    trainer = DinoTrainer(cfg)
    head0 = copy.deepcopy(trainer.student.head.state_dict())
    assert any(n.startswith("head.") for n in trainer.trainable_names)
    trainer.run()
    head1 = trainer.student.head.state_dict()
    assert not torch.equal(head0["last_layer_v"], head1["last_layer_v"])  # frozen in epoch 0 only
    assert not torch.equal(head0["mlp.0.weight"], head1["mlp.0.weight"])


def test_dataloader_workers_do_not_change_the_result(data, tmp_path):
    kw = dict(batch_size=4, epochs=1, max_steps=2, lr=0.05, warmup_epochs=0)
    a = DinoTrainer(tiny_config("dino", data, tmp_path / "w0", workers=0, **kw))
    a.run()
    b = DinoTrainer(tiny_config("dino", data, tmp_path / "w2", workers=2, **kw))
    b.run()
    assert_same_tensors(a.own_state(), b.own_state())
    assert torch.equal(a.dino_loss.center, b.dino_loss.center)


@pytest.mark.parametrize("dropout", [None, 0.1])
def test_default_dino_adapters_have_no_dropout(data, tmp_path, dropout):
    """The paper's DINO student never entered train mode, so its adapter dropout never fired:
    with the default, two train-mode student forwards of the same crops after a step are equal."""
    kw = {} if dropout is None else {"dropout": dropout}
    cfg = tiny_config("dino", data, tmp_path / "run", batch_size=8, epochs=1, lr=0.5, warmup_epochs=0, **kw)
    trainer = DinoTrainer(cfg)
    trainer.run()
    up = [b.adapter.up.weight for b in trainer.model.visual.transformer.resblocks]
    assert all(w.abs().sum() > 0 for w in up)  # trained: the adapter branch contributes
    trainer.student.train()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        same = torch.equal(trainer.student(crops), trainer.student(crops))
    assert same is (dropout is None)
    recorded = read_adapter_file(tmp_path / "run" / "adapter.safetensors")[1]
    assert recorded["config"]["dropout"] == (0.0 if dropout is None else dropout)
    assert recorded["training"]["config"]["precision"] == "fp32"


def test_timm_tower_is_refused_with_the_supervised_alternative(data, tmp_path):
    from clipimo.errors import ClipimoError

    cfg = tiny_config("dino", data, tmp_path / "run", batch_size=4, max_steps=1, model="clipimo-tiny-sigmoid")
    with pytest.raises(ClipimoError, match="timm towers .* with the supervised method"):
        DinoTrainer(cfg)
