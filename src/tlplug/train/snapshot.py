"""A run's state between two steps, taken and put back.

``tlplug lr-find`` and ``--lr auto`` take a snapshot before the range test and put it back
after, so the test trains nothing; a stage whose first epoch explodes is put back to its
start and tried again (:mod:`tlplug.train.rollback`).
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import torch

from tlplug.run import Run


@attrs.frozen
class Snapshot:
    """Weights and buffers, which parameters train, module modes, the optimizer's and LR
    schedule's state, the weight average, where the run stands (epoch, stage, source,
    optimizer steps, the sampler's epoch) and the random number generators."""

    weights: dict[str, torch.Tensor]
    flags: list[bool]
    modes: list[bool]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    average: dict[str, torch.Tensor] | None
    where: tuple[Any, ...]
    rngs: tuple[Any, ...]

    @classmethod
    def take(cls, run: Run) -> Snapshot:
        """The state of ``run`` now (tensors copied to the CPU)."""
        model = run.model
        average = run.ema.state_dict() if run.ema is not None else None
        return cls(
            weights={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            flags=[param.requires_grad for param in model.parameters()],
            modes=[module.training for module in model.modules()],
            optimizer=copy.deepcopy(run.optimizer.state_dict()),
            scheduler=copy.deepcopy(run.lr_scheduler.state_dict()),
            average={k: v.detach().clone() for k, v in average.items()} if average else None,
            where=(run.epoch, run.stage, run.step, run.source, run.loaders.train.sampler.epoch),
            rngs=(
                random.getstate(),
                np.random.get_state(),
                torch.get_rng_state(),
                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            ),
        )

    def restore(self, run: Run) -> None:
        """Put ``run`` back in this state."""
        model, optimizer = run.model, run.optimizer
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.load_state_dict(self.weights)
        optimizer.load_state_dict(self.optimizer)
        run.lr_scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        if self.average is not None:
            run.ema.load_state_dict(self.average)
        for param, trains in zip(model.parameters(), self.flags, strict=True):
            param.requires_grad_(trains)
        for module, training in zip(model.modules(), self.modes, strict=True):
            module.training = training
        run.epoch, run.stage, run.step, run.source, run.loaders.train.sampler.epoch = self.where
        random.setstate(self.rngs[0])
        np.random.set_state(self.rngs[1])
        torch.set_rng_state(self.rngs[2])
        if self.rngs[3] is not None:
            torch.cuda.set_rng_state_all(self.rngs[3])


@contextlib.contextmanager
def kept(run: Run) -> Iterator[None]:
    """Put ``run`` back as it was when the block ends."""
    snapshot = Snapshot.take(run)
    try:
        yield
    finally:
        snapshot.restore(run)
