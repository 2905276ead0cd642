"""Applying a freeze stage to a model: which parameters get gradients, which norms update.

A frozen group's parameters have ``requires_grad`` False, so autograd computes nothing for
them and the optimizer (which skips parameters without a gradient) never steps them. Its
BatchNorm layers stay in eval mode, so their running statistics are not touched either.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from tlplug.model import TransferModel

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def apply_stage(model: TransferModel, trainable: Collection[str]) -> int:
    """Make exactly the groups in ``trainable`` trainable; return the trainable parameter count."""
    count = 0
    for group in model.groups:
        train = group.name in trainable
        for param in model.group_params(group.name):
            param.requires_grad_(train)
            count += param.numel() if train else 0
    return count


def train_mode(model: TransferModel, trainable: Collection[str]) -> None:
    """Put ``model`` in training mode, with the norm layers of frozen groups in eval mode."""
    model.train()
    for path, group in model.group_modules().items():
        module = model.get_submodule(path)
        if group not in trainable and isinstance(module, _NORMS):
            module.eval()
