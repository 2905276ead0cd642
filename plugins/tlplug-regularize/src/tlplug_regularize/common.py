"""What every penalty here shares: option checks, the running mean it reports per epoch, and
the plain L2 term on the head."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tlplug import OptionError


def check_at_least(strategy: str, option: str, value: float, low: float) -> None:
    """Raise :class:`tlplug.OptionError` unless ``value >= low``."""
    if value < low:
        raise OptionError(
            f"regularizer '{strategy}' option '{option}' must be at least {low:g}, got {value:g}"
        )


class Penalty:
    """Base of this package's penalties: ``penalty(batch)`` returns a scalar tensor.

    Each call's value is added to a running sum on the device (no host sync per step);
    :meth:`epoch_mean` reads and resets it, for the ``regularizers`` entry the plugin adds
    to every metrics.jsonl record.
    """

    name = ""
    needs_images = False
    # On a frozen backbone each penalty here is constant or an L2 term on the head, which the
    # converged probe's own L2 strength (chosen on held-out images) takes the place of.
    keeps_probe = True

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._count = 0

    def _tally(self, value: torch.Tensor) -> torch.Tensor:
        """Remember ``value`` for the epoch's mean and return it."""
        detached = value.detach().float()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += 1
        return value

    def epoch_mean(self) -> float | None:
        """Mean value since the last call (None if not called since), then start over."""
        if self._sum is None:
            return None
        mean = self._sum.item() / self._count
        self._sum, self._count = None, 0
        return mean

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings of the penalty, defaults included, for config.json."""
        return {"name": self.name}


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that currently train (frozen ones get no gradient from a penalty)."""
    return [p for p in params if p.requires_grad]


def squared_norm(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``sum ||t||^2`` over ``tensors`` in float32; a zero on ``device`` when there are none."""
    terms = [t.float().pow(2).sum() for t in tensors]
    if not terms:
        return torch.zeros((), device=device)
    return torch.stack(terms).sum()


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
