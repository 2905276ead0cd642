"""Built-in learning-rate schedules, stepped once per optimizer step (``plateau`` per epoch).

Each scales every parameter group's own base LR, so per-group multipliers survive, and
each is built once for the whole run, across every freeze stage.
"""

from __future__ import annotations

import math
from types import ModuleType

from tlplug import hookimpl


@hookimpl
def tlplug_register_lr_schedules(register):
    register("constant", constant)
    register("cosine", cosine)
    register("onecycle", onecycle)
    register("step", step)
    register("plateau", plateau)


def constant(optimizer, total_steps: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0):
    """The base LR throughout, after an optional linear warmup."""
    warmup = round(warmup_epochs * steps_per_epoch)
    return _schedulers().LambdaLR(optimizer, lambda s: _warmup(s, warmup))


def cosine(
    optimizer,
    total_steps: int,
    steps_per_epoch: int,
    *,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.0,
):
    """Linear warmup (at most a quarter of the run), then cosine decay to ``min_lr_ratio``."""
    warmup = min(round(warmup_epochs * steps_per_epoch), total_steps // 4)

    def factor(s: int) -> float:
        if s < warmup:
            return _warmup(s, warmup)
        progress = (s - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, progress))
        )

    return _schedulers().LambdaLR(optimizer, factor)


def onecycle(
    optimizer,
    total_steps: int,
    steps_per_epoch: int,
    *,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
):
    """The one-cycle policy: up to each group's LR, then down, cycling momentum inversely."""
    return _schedulers().OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(2, total_steps),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def step(
    optimizer, total_steps: int, steps_per_epoch: int, *, step_epochs: int = 3, gamma: float = 0.1
):
    """Multiply the LR by ``gamma`` every ``step_epochs`` epochs."""
    every = max(1, step_epochs * steps_per_epoch)
    return _schedulers().LambdaLR(optimizer, lambda s: gamma ** (s // every))


def plateau(
    optimizer,
    total_steps: int,
    steps_per_epoch: int,
    *,
    factor: float = 0.1,
    patience: int = 2,
    min_lr: float = 0.0,
):
    """Multiply the LR by ``factor`` when the validation loss stops improving for
    ``patience`` epochs (stepped once per epoch)."""
    return _schedulers().ReduceLROnPlateau(
        optimizer, factor=factor, patience=patience, min_lr=min_lr
    )


def _warmup(step_index: int, warmup: int) -> float:
    return 1.0 if step_index >= warmup else (step_index + 1) / (warmup + 1)


def _schedulers() -> ModuleType:
    from torch.optim import lr_scheduler  # on first use: plugins load before torch is needed

    return lr_scheduler
