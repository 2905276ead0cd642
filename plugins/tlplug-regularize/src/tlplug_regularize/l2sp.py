"""L2-SP: weight decay toward the starting point instead of toward zero.

Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML 2018 (arXiv:1802.01483)::

    Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2

``w_S`` are the backbone's parameters and ``w0_S`` their values when the run starts (the
pretrained weights); ``w_new`` are the parameters the source network did not have, here
the head's.
"""

from __future__ import annotations

from typing import Any

import torch

from tlplug import Batch, TransferModel

from .common import (
    Penalty,
    check_at_least,
    model_device,
    squared_norm,
    trainable,
)


class L2SP(Penalty):
    """``alpha/2 * ||w_backbone - w0||^2 + beta/2 * ||w_head||^2`` over trainable parameters.

    ``w0`` is a detached copy of the backbone's parameters taken when the penalty is made,
    on the model's device. Parameters that do not require grad at a step (frozen by the
    schedule) are left out of that step's sum: they receive no update either way.
    """

    name = "l2-sp"
    needs_images = False

    def __init__(self, model: TransferModel, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.device = model_device(model)
        # (parameter, starting value) pairs; the parameters are the live ones, so the
        # snapshot stays valid when the engine re-lays them out (channels-last) in place.
        self.anchored = [(p, p.detach().clone()) for p in model.backbone.parameters()]
        self.head = list(model.head.parameters())

    def backbone_term(self) -> torch.Tensor:
        """``||w - w0||^2`` over the backbone parameters that currently train (no factor)."""
        moved = (p - p0 for p, p0 in self.anchored if p.requires_grad)
        return squared_norm(moved, self.device)

    def head_term(self) -> torch.Tensor:
        """``||w_head||^2`` over the head parameters that currently train (no factor)."""
        return squared_norm(trainable(self.head), self.device)

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The penalty for this step; ``batch`` is not used (it depends on weights only)."""
        value = torch.zeros((), device=self.device)
        if self.alpha:
            value = value + self.alpha / 2 * self.backbone_term()
        if self.beta:
            value = value + self.beta / 2 * self.head_term()
        return self._tally(value)

    def describe(self) -> dict[str, Any]:
        """Name and options, defaults included."""
        return {"name": self.name, "alpha": self.alpha, "beta": self.beta}


def l2_sp(model: TransferModel, *, alpha: float = 0.1, beta: float = 0.01) -> L2SP:
    """L2-SP (Li et al. 2018): pull the backbone toward its starting weights, the head to 0.

    ``alpha`` weighs ``||w_backbone - w0||^2 / 2``, ``beta`` weighs ``||w_head||^2 / 2``;
    both must be at least 0. Use it with ``--weight-decay 0``: weight decay pulls the
    backbone toward zero, against what L2-SP keeps.
    """
    check_at_least("l2-sp", "alpha", alpha, 0)
    check_at_least("l2-sp", "beta", beta, 0)
    return L2SP(model, alpha, beta)
