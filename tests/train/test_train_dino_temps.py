"""The DINO loss takes the teacher temperature of the CURRENT epoch from the warm-up schedule
(linear 0.04 -> 0.07 over 3 epochs), checked mid-warm-up, not at the clamped end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipimo.train.dino import DINOLoss, teacher_temp_schedule

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hand_loss(student, teacher, center, temp, student_temp=0.1, n_global=2):
    s = student.astype(np.float64) / student_temp
    s = s - s.max(-1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(-1, keepdims=True))
    t = (teacher.astype(np.float64) - center) / temp
    t = np.exp(t - t.max(-1, keepdims=True))
    q = t / t.sum(-1, keepdims=True)
    terms = [-(q[i] * logp[v]).sum() for i in range(n_global) for v in range(len(student)) if v != i]
    return float(np.mean(terms))


@pytest.mark.parametrize("epoch", [0, 1, 2, 6])
def test_loss_uses_the_epochs_teacher_temperature(epoch):
    warm, final, warm_epochs, epochs = 0.04, 0.07, 3, 8
    temps = teacher_temp_schedule(warm, final, warm_epochs, epochs)
    hand_temp = warm + (final - warm) * min(epoch, warm_epochs - 1) / (warm_epochs - 1)  # 0.04, 0.055, 0.07
    assert temps[epoch] == pytest.approx(hand_temp)
    g = torch.Generator().manual_seed(epoch)
    student = torch.randn(3, 5, generator=g)  # 2 global + 1 local view, batch 1, 5 dims
    teacher = torch.randn(2, 5, generator=g)
    loss_fn = DINOLoss(5, ncrops=3, teacher_temps=temps)
    got = loss_fn(student, teacher, epoch=epoch, update_center=False).item()
    assert got == pytest.approx(_hand_loss(student.numpy(), teacher.numpy(), 0.0, hand_temp), rel=1e-5)
    if epoch == 1:  # the neighbouring epochs' temperatures give clearly different losses
        for other in (0.04, 0.07):
            assert abs(_hand_loss(student.numpy(), teacher.numpy(), 0.0, other) - got) > 1e-3
