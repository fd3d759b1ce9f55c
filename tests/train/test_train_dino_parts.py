"""DINO pieces: loss on a hand case, center update, schedules, head, multi-crop, clipping."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipimo.train.dino import (
    DINOHead,
    DINOLoss,
    MultiCropModel,
    MultiCropTransform,
    clip_gradients,
    cosine_schedule,
    ema_update,
    teacher_temp_schedule,
)

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_loss_hand_case_and_center_update():
    # 2 global views + 1 local view, batch of 1, 2 output dims
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True)
    teacher = torch.tensor([[0.2, 0.0], [0.0, 0.1]], requires_grad=True)
    loss_fn = DINOLoss(2, ncrops=3, teacher_temps=np.array([0.04, 0.07]), student_temp=0.1, center_momentum=0.9)
    loss_fn.center.fill_(0.05)
    loss = loss_fn(student, teacher, epoch=1)
    s = student.detach().numpy() / 0.1
    logp = s - np.log(np.exp(s).sum(-1, keepdims=True))
    q = _softmax((teacher.detach().numpy() - 0.05) / 0.07)
    # pairs (teacher view, student view) with different views: (0,1) (0,2) (1,0) (1,2)
    expected = np.mean([-(q[0] * logp[1]).sum(), -(q[0] * logp[2]).sum(),
                        -(q[1] * logp[0]).sum(), -(q[1] * logp[2]).sum()])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # center: 0.9 * old + 0.1 * mean of the teacher outputs of this step
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.9 * 0.05 + 0.1 * 0.1, 0.9 * 0.05 + 0.1 * 0.05]]))
    loss.backward()
    assert teacher.grad is None  # the teacher gets no gradient
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_schedules():
    lr = cosine_schedule(1.0, 0.01, epochs=4, steps_per_epoch=5, warmup_epochs=2)
    assert len(lr) == 20
    np.testing.assert_allclose(lr[:10], np.linspace(0, 1.0, 10))
    assert lr[10] == pytest.approx(1.0) and lr[-1] > 0.01 and lr[-1] == pytest.approx(0.01, abs=0.03)
    assert np.all(np.diff(lr[10:]) < 0)
    m = cosine_schedule(0.9998, 1.0, epochs=2, steps_per_epoch=3)
    assert m[0] == pytest.approx(0.9998) and np.all(np.diff(m) > 0) and m[-1] < 1.0
    wd = cosine_schedule(0.04, 0.4, epochs=3, steps_per_epoch=1)
    assert wd[0] == pytest.approx(0.04)
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 2), [0.04, 0.055])


def test_head_shapes_and_fixed_norm():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    w = head.last_layer_weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(50))
    assert "last_layer_g" not in dict(head.named_parameters())  # gain fixed at 1
    assert head(torch.randn(3, 16)).shape == (3, 50)
    free = DINOHead(16, out_dim=50, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert "last_layer_g" in dict(free.named_parameters())


def test_multicrop_model_groups_by_resolution():
    seen = []

    class Tower(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.mean(dim=(2, 3))

    model = MultiCropModel(Tower(), torch.nn.Identity())
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    out = model(crops)
    assert seen == [(4, 3, 8, 8), (4, 3, 4, 4)] and out.shape == (8, 3)


def test_multicrop_transform():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    t = MultiCropTransform(32, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), local_number=3)
    torch.manual_seed(1)
    a = t(img)
    torch.manual_seed(1)
    b = t(img)
    torch.manual_seed(2)
    c = t(img)
    assert [tuple(x.shape) for x in a] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert min(x.min().item() for x in a) < 0  # normalised
    assert t.ncrops == 5


def test_clip_and_ema():
    p1 = torch.nn.Parameter(torch.zeros(3))
    p2 = torch.nn.Parameter(torch.zeros(2))
    p1.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    p2.grad = torch.tensor([0.1, 0.0])  # norm 0.1 < clip: untouched
    clip_gradients([p1, p2], 0.3, "param")
    assert p1.grad.norm().item() == pytest.approx(0.3, rel=1e-4)
    assert torch.equal(p2.grad, torch.tensor([0.1, 0.0]))
    p1.grad = torch.tensor([3.0, 4.0, 0.0])
    p2.grad = torch.tensor([0.0, 0.0])
    clip_gradients([p1, p2], 1.0, "global")
    assert math.isclose(p1.grad.norm().item(), 1.0, rel_tol=1e-4)
    t, s = torch.ones(2), torch.zeros(2)
    ema_update([t], [s], 0.75)
    assert torch.equal(t, torch.full((2,), 0.75))
