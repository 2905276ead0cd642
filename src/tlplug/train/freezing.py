"""Applying a freeze stage to a model: which parameters get gradients, which modules train.

A frozen group's parameters have ``requires_grad`` False, so autograd computes nothing for
them and the optimizer (which skips parameters without a gradient) never steps them.

The BatchNorm policy says what a frozen group's modules do while the rest trains:

- ``frozen`` (default): a frozen group is a fixed function. Its modules run in eval mode,
  so BatchNorm running statistics stay bit-identical and dropout is off.
- ``eval``: as ``frozen``, and the BatchNorm layers of trainable groups run in eval mode
  too (their affine parameters still learn); for tiny batches.
- ``train``: every module trains as after a plain ``model.train()``; frozen groups' BatchNorm
  statistics follow the new data although their weights stay fixed.
"""

from __future__ import annotations

from torch import nn

from tlplug.model.transfer import TransferModel
from tlplug.recipe import BnPolicy
from tlplug.train.stages import Stage

# Norm layers that keep running statistics (BatchNorm, SyncBatchNorm, tracked InstanceNorm).
STAT_NORMS = (nn.modules.batchnorm._NormBase,)


def is_bias(name: str) -> bool:
    """True for a bias parameter, as BitFit counts them (any name ending in ``bias``)."""
    return name.rpartition(".")[2] == "bias"


def apply_stage(model: TransferModel, stage: Stage) -> int:
    """Make exactly ``stage``'s parameters trainable; return the trainable parameter count."""
    count = 0
    for group in model.groups:
        whole = group.name in stage.trainable
        biases = group.name in stage.biases
        for name, param in zip(group.params, model.group_params(group.name), strict=True):
            train = (whole or (biases and is_bias(name))) and name not in model.pinned
            param.requires_grad_(train)
            count += param.numel() if train else 0
    return count


def train_mode(model: TransferModel, stage: Stage, bn_policy: BnPolicy = "frozen") -> None:
    """Put ``model`` in training mode for ``stage`` under ``bn_policy``."""
    model.train()
    if bn_policy == "train":
        return
    active = set(stage.training)
    done: set[str] = set()
    for path, groups in model.subtree_groups().items():
        parent = path.rpartition(".")[0]
        if path and parent in done:
            done.add(path)
        elif groups and groups.isdisjoint(active):
            model.get_submodule(path).eval()
            done.add(path)
    if bn_policy == "eval":
        for module in model.modules():
            if isinstance(module, STAT_NORMS):
                module.eval()
