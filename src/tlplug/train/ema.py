"""An exponential moving average of the weights (``--ema DECAY``).

After every optimizer step each trainable parameter's average moves towards it:
``average = decay * average + (1 - decay) * parameter``; buffers (BatchNorm statistics)
are copied as they are. Parameters a stage keeps frozen do not change, so their average is
left where it is. Every validation also scores the averaged weights, and they are saved
when they score best (as timm's ``--model-ema`` does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``model``'s floating-point state."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.average = {
            name: value.detach().clone()
            for name, value in model.state_dict().items()
            if value.is_floating_point()
        }
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._tracked: list[str] = []

    @torch.no_grad()
    def follow(self, model: nn.Module, start: bool = False) -> None:
        """Track the parameters that train now (call when a stage starts). The average of
        every other parameter is set to the parameter: a frozen weight is its own average;
        with ``start``, the trainable ones' too (weights fit outright, not stepped to)."""
        for name, param in model.named_parameters():
            if start or not param.requires_grad:
                self.average[name].copy_(param)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        buffers = [(n, b) for n, b in model.named_buffers() if n in self.average]
        self._pairs = [(self.average[name], param) for name, param in params]
        self._buffers = [(self.average[name], buffer) for name, buffer in buffers]
        self._tracked = [name for name, _ in params + buffers]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the current weights."""
        if self._pairs:
            averages, params = zip(*self._pairs, strict=True)
            torch._foreach_lerp_(averages, params, 1.0 - self.decay)
        for average, buffer in self._buffers:
            average.copy_(buffer)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Give ``model`` the averaged weights while the block runs."""
        state = model.state_dict()
        with torch.no_grad():
            kept = {name: state[name].clone() for name in self.average}
            for name, average in self.average.items():
                state[name].copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in kept.items():
                    state[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resume state needs: the averages of the tracked parameters and buffers
        (the others equal their parameters, as :meth:`follow` sets them)."""
        return {name: self.average[name] for name in self._tracked}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state_dict` output (after :meth:`follow`)."""
        with torch.no_grad():
            for name, value in state.items():
                self.average[name].copy_(value)
