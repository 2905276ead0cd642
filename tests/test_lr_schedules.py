"""LR schedules: built once, stepped per batch, scaling every group's own LR."""

import pytest
import torch

from tlplug.builtin import lr_schedules


def optimizer_with_groups(base=(1.0, 0.1)):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, base, strict=True)]
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def trace(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append([g["lr"] for g in optimizer.param_groups])
    return lrs


def test_constant_with_warmup():
    opt = optimizer_with_groups()
    lrs = trace(lr_schedules.constant(opt, 20, 5, warmup_epochs=1), opt, 20)
    assert lrs[-1] == [1.0, 0.1]
    assert lrs[0][0] < lrs[3][0] < 1.0


def test_cosine_warms_up_then_decays_to_min_for_every_group():
    opt = optimizer_with_groups()
    scheduler = lr_schedules.cosine(opt, 40, 10, warmup_epochs=1, min_lr_ratio=0.1)
    assert opt.param_groups[0]["lr"] < 1.0  # warmup starts low
    lrs = trace(scheduler, opt, 40)
    assert max(lr[0] for lr in lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx([0.1, 0.01])
    assert all(a[1] == pytest.approx(a[0] / 10) for a in lrs)


def test_onecycle_peaks_at_each_groups_lr():
    opt = optimizer_with_groups()
    lrs = trace(lr_schedules.onecycle(opt, 40, 10), opt, 39)
    assert max(lr[0] for lr in lrs) == pytest.approx(1.0, rel=1e-3)
    assert max(lr[1] for lr in lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs[-1][0] < 1e-3


def test_step():
    opt = optimizer_with_groups()
    lrs = trace(lr_schedules.step(opt, 30, 5, step_epochs=2, gamma=0.5), opt, 25)
    assert [round(lr[0], 4) for lr in lrs[8:12]] == [1.0, 0.5, 0.5, 0.5]
    assert lrs[-1][0] == pytest.approx(0.25)  # 25 steps: two drops
