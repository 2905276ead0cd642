"""A check of the transfer mechanics on one backbone: what the architecture sweeps run.

The backbone gets a linear head and a gradual plan that unfreezes ``groups_per_stage``
groups per stage, top down, until everything trains; one optimizer (built once) takes one
step per stage on a tiny random batch. After each step:

- every tensor of a frozen group, parameters and buffers (BatchNorm statistics), is
  bit-identical, and no gradient was computed for it;
- every trainable group changed;
- the optimizer holds state for exactly the groups that have trained so far.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from tlplug.builtin.schedules import gradual
from tlplug.model.backbone import Backbone
from tlplug.model.transfer import TransferModel
from tlplug.recipe import Recipe
from tlplug.train.freezing import apply_stage, train_mode
from tlplug.train.optimizer import build_optimizer, lr_multipliers
from tlplug.train.stages import check_plan


def check_mechanics(
    backbone: Backbone, img_size: int, *, groups_per_stage: int = 1, optimizer: str = "sgd"
) -> list[str]:
    """Step through a gradual plan on ``backbone``; return the problems found (none: [])."""
    torch.manual_seed(0)
    model = TransferModel(backbone, nn.Linear(backbone.num_features, 3))
    names = model.group_names()
    plan = check_plan(
        gradual(names, len(names), groups_per_stage=groups_per_stage), names, "gradual"
    )
    recipe = Recipe(optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 1e-3)
    opt = build_optimizer(model, recipe, lr_multipliers(names, recipe))
    owner = model.state_groups()
    params = dict(model.named_parameters())
    images, labels = torch.randn(2, 3, img_size, img_size), torch.tensor([0, 1])
    trained: set[str] = set()
    problems: list[str] = []
    for stage in plan:
        apply_stage(model, stage)
        train_mode(model, stage)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt.zero_grad(set_to_none=True)
        functional.cross_entropy(model(images), labels).backward()
        opt.step()
        trained |= set(stage.training)
        after = model.state_dict()
        where = f"stage '{stage.name}'"
        for key, value in after.items():
            if owner[key] not in stage.training and not torch.equal(before[key], value):
                problems.append(f"{where}: frozen {key} ({owner[key]}) changed")
        for name, param in params.items():
            if owner[name] not in stage.training and param.grad is not None:
                problems.append(f"{where}: frozen {name} got a gradient")
        for group in stage.trainable:
            keys = model.group_param_names(group)
            if all(torch.equal(before[k], after[k]) for k in keys):
                problems.append(f"{where}: trainable group {group} did not change")
        with_state = {owner[n] for n, p in params.items() if opt.state.get(p)}
        if with_state - trained:
            problems.append(
                f"{where}: optimizer state for untrained {sorted(with_state - trained)}"
            )
        if trained - with_state:
            problems.append(
                f"{where}: no optimizer state for trained {sorted(trained - with_state)}"
            )
    return problems
