"""BSS: Batch Spectral Shrinkage, against negative transfer.

Chen, Wang, Fu, Long and Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch
Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019::

    L_bss(F) = eta * sum_{i=1..k} sigma_{-i}(F)^2

``F`` is the batch's ``(batch, num_features)`` feature matrix and ``sigma_{-i}`` its i-th
smallest singular value: the spectral components that pretrained features carry but the
target task does not support are shrunk.
"""

from __future__ import annotations

from typing import Any

import torch

from tlplug import Batch, TransferModel

from .common import Penalty, check_at_least


class BSS(Penalty):
    """``eta * sum of the k smallest squared singular values`` of the batch's features.

    A batch of at most ``k`` rows (the last, short batch of an epoch) adds nothing: there
    every singular value is among the ``k`` smallest, and the penalty would shrink the
    features as a whole instead of their weakest directions.
    """

    name = "bss"
    needs_images = False  # the backbone's features are in every batch, cached ones too

    def __init__(self, eta: float, k: int):
        super().__init__()
        self.eta, self.k = eta, k

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The penalty of ``batch.features``; float32 whatever the autocast precision."""
        features = batch.features.float().flatten(1)
        if min(features.shape) <= self.k:
            return self._tally(features.new_zeros(()))
        singular = torch.linalg.svdvals(features)  # descending
        return self._tally(self.eta * singular[-self.k :].pow(2).sum())

    def describe(self) -> dict[str, Any]:
        """Name and options, defaults included."""
        return {"name": self.name, "eta": self.eta, "k": self.k}


def bss(model: TransferModel, *, eta: float = 0.001, k: int = 1) -> BSS:
    """BSS (Chen et al. 2019): shrink the k smallest singular values of the batch features.

    ``eta`` (at least 0) weighs the sum of the ``k`` (at least 1) smallest squared singular
    values of the ``(batch, features)`` matrix. It changes training only while backbone
    groups train: on a frozen backbone the features are constants.
    """
    check_at_least("bss", "eta", eta, 0)
    check_at_least("bss", "k", k, 1)
    return BSS(eta, k)
