"""One optimizer per run, built once, with one parameter group per layer group.

Freezing never rebuilds it: a frozen group's parameters just receive no gradient, which
every torch optimizer skips. State of a group that trained is kept across stage changes,
and LR schedulers see the same groups from the first step to the last.
"""

from __future__ import annotations

import torch

from tlplug.model import TransferModel
from tlplug.recipe import Recipe


def build_optimizer(model: TransferModel, recipe: Recipe) -> torch.optim.Optimizer:
    """Create the recipe's optimizer over every group of ``model`` (frozen ones included)."""
    groups = [
        {"params": model.group_params(name), "name": name, "lr": recipe.lr}
        for name in model.group_names()
    ]
    decay = recipe.resolved_weight_decay
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, weight_decay=decay)
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=decay)
