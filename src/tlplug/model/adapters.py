"""Adapters: trainable modules a plugin adds to the backbone (LoRA and the like).

An adapter factory changes ``model.backbone`` in place and returns an :class:`Adapter`.
The engine then regroups the model's parameters, so every new parameter belongs to the
layer group of the module it was added to and a freeze schedule trains a group's adapter
parameters when it trains the group; parameters the adapter pins (the weights it adapts)
never train.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

from tlplug.errors import TlplugError
from tlplug.model.transfer import TransferModel


@attrs.frozen
class Adapter:
    """What an adapter factory returns.

    ``export``: returns the weights to save, as the state dict of the model without the
    adapter (merged into it), so prediction needs neither the adapter nor its library.
    ``pinned``: full parameter names (``backbone.…``) that stay frozen whatever the
    schedule says.
    """

    export: Callable[[TransferModel], dict[str, torch.Tensor]]
    pinned: frozenset[str] = frozenset()


def attach_adapter(model: TransferModel, factory, options: dict, name: str) -> Adapter:
    """Let the adapter called ``name`` change ``model``; regroup and pin its parameters."""
    before = {id(p): n for n, p in model.named_parameters()}
    adapter = factory(model, **options)
    if not isinstance(adapter, Adapter) or not callable(adapter.export):
        raise TlplugError(
            f"adapter '{name}' returned {type(adapter).__name__}, not a tlplug.Adapter "
            "with an export function"
        )
    model.regroup(before)
    unknown = sorted(set(adapter.pinned) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise TlplugError(f"adapter '{name}' pins unknown parameters: {', '.join(unknown[:3])}")
    model.pinned = frozenset(adapter.pinned)
    return adapter
