"""DINO details the other DINO tests leave open: a one- or zero-epoch teacher warm-up, the loss's
default of two teacher views on a batch larger than one, the default center momentum, a center
that is not uniform (a uniform one cancels in the softmax) and epochs past the schedule's end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipimo.train.dino import DINOLoss, teacher_temp_schedule

# tiny tensors: one torch thread (see the root conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_teacher_warmup_of_one_epoch_starts_at_the_warmup_temperature():
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 1, 3), [0.04, 0.07, 0.07])


def test_no_teacher_warmup_is_the_final_temperature_throughout():
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 0, 3), [0.07, 0.07, 0.07])


def _hand_loss(student, teacher, batch, ncrops, temp, student_temp=0.1, center=0.0):
    """Views are consecutive blocks of ``batch`` rows; teacher view i is paired with every student
    view but i, each pair's cross-entropy averaged over the batch, then over the pairs."""
    s = student.astype(np.float64) / student_temp
    m = s.max(-1, keepdims=True)
    logp = s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))
    t = np.exp((teacher.astype(np.float64) - center) / temp)
    q = t / t.sum(-1, keepdims=True)
    views_s = [logp[v * batch:(v + 1) * batch] for v in range(ncrops)]
    views_t = [q[i * batch:(i + 1) * batch] for i in range(len(teacher) // batch)]
    terms = [-(qi * views_s[v]).sum(-1).mean() for i, qi in enumerate(views_t) for v in range(ncrops) if v != i]
    return float(np.mean(terms))


def test_loss_defaults_to_two_teacher_views_and_momentum_0_9():
    batch, ncrops, temp = 3, 4, 0.05
    g = torch.Generator().manual_seed(0)
    student = torch.randn(ncrops * batch, 6, generator=g)
    teacher = torch.randn(2 * batch, 6, generator=g)  # the two global views of 3 images
    loss_fn = DINOLoss(6, ncrops=ncrops, teacher_temps=np.array([temp]))
    got = loss_fn(student, teacher, epoch=0).item()
    assert got == pytest.approx(_hand_loss(student.numpy(), teacher.numpy(), batch, ncrops, temp), rel=1e-5)
    # the center moves from 0 by (1 - 0.9) times this step's mean teacher output
    torch.testing.assert_close(loss_fn.center, 0.1 * teacher.mean(0, keepdim=True))


def test_loss_subtracts_a_non_uniform_center_and_moves_it():
    batch, ncrops, temp = 2, 3, 0.07
    g = torch.Generator().manual_seed(1)
    student = torch.randn(ncrops * batch, 5, generator=g)
    teacher = torch.randn(2 * batch, 5, generator=g)
    center = torch.tensor([[0.3, -0.2, 0.0, 0.5, -0.4]])
    loss_fn = DINOLoss(5, ncrops=ncrops, teacher_temps=np.array([temp]), center_momentum=0.8)
    loss_fn.center.copy_(center)
    got = loss_fn(student, teacher, epoch=0).item()
    assert got == pytest.approx(_hand_loss(student.numpy(), teacher.numpy(), batch, ncrops, temp,
                                           center=center.numpy()), rel=1e-5)
    assert abs(_hand_loss(student.numpy(), teacher.numpy(), batch, ncrops, temp) - got) > 1e-3  # the center matters
    torch.testing.assert_close(loss_fn.center, 0.8 * center + 0.2 * teacher.mean(0, keepdim=True))


def test_epochs_past_the_schedule_use_its_last_temperature():
    temps = np.array([0.04, 0.06])
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)
    loss_fn = DINOLoss(4, ncrops=3, teacher_temps=temps)
    got = loss_fn(student, teacher, epoch=5, update_center=False).item()
    assert got == pytest.approx(_hand_loss(student.numpy(), teacher.numpy(), 1, 3, 0.06), rel=1e-5)
