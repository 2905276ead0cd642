"""The training loss: cross-entropy on hard or soft targets plus the regularizers' penalties."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
from torch.nn import functional


@attrs.frozen
class Batch:
    """One training step as a regularizer sees it.

    ``images``: the normalized input batch (None while the head trains on cached
    features); ``features``: the backbone's output, ``(batch, num_features)``; ``logits``:
    the head's output; ``targets``: ``(batch, num_classes)`` class probabilities (one-hot
    unless mixup or cutmix mixed them).
    """

    images: torch.Tensor | None
    features: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@attrs.define
class TrainingLoss:
    """Cross-entropy with label smoothing and class weights, plus every penalty."""

    num_classes: int
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    penalties: Sequence[Callable[[Batch], torch.Tensor]] = ()

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The loss of ``batch``, in float32."""
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.to(batch.logits.device)
        loss = functional.cross_entropy(
            batch.logits.float(),
            batch.targets,
            weight=weight,
            label_smoothing=self.label_smoothing,
        )
        for penalty in self.penalties:
            loss = loss + penalty(batch).float()
        return loss

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot float targets for integer ``labels``."""
        return functional.one_hot(labels, self.num_classes).float()


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights that give every class the same total weight: ``n / (k * count)``."""
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))
