"""The training loss: cross-entropy on hard or soft targets, blended with a teacher's
outputs when the run distils one, plus the regularizers' penalties."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import torch
from torch.nn import functional

if TYPE_CHECKING:
    from tlplug.train.teacher import Distillation


@attrs.frozen
class Batch:
    """One training step as a regularizer sees it.

    ``images``: the normalized input batch (None while the head trains on cached
    features); ``features``: the backbone's output, ``(batch, num_features)``; ``logits``:
    the head's output; ``targets``: ``(batch, num_classes)`` class probabilities (one-hot
    unless mixup or cutmix mixed them); ``teacher_logits``: the teacher's logits on the
    same images when the run distils one (``--teacher``), else None.
    """

    images: torch.Tensor | None
    features: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    teacher_logits: torch.Tensor | None = None


@attrs.define
class TrainingLoss:
    """Cross-entropy with label smoothing and class weights, blended with the teacher's
    outputs by the distillation loss when there is one, plus every penalty."""

    num_classes: int
    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None
    penalties: Sequence[Callable[[Batch], torch.Tensor]] = ()
    distillation: Distillation | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The loss of ``batch``, in float32."""
        return self.with_labels_part(batch)[0]

    def with_labels_part(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of ``batch`` and its labels' cross-entropy alone (the same number as
        the loss but for a teacher's part and the penalties), both float32."""
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.to(batch.logits.device)
        loss = functional.cross_entropy(
            batch.logits.float(),
            batch.targets,
            weight=weight,
            label_smoothing=self.label_smoothing,
        )
        labels = loss
        if self.distillation is not None and batch.teacher_logits is not None:
            loss = self.distillation.loss(batch.logits.float(), batch.teacher_logits, loss)
        for penalty in self.penalties:
            loss = loss + penalty(batch).float()
        return loss, labels

    def taught(self, images: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits for a batch of normalized ``images``; None without one."""
        return None if self.distillation is None else self.distillation.teacher(images)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot float targets for integer ``labels``."""
        return functional.one_hot(labels, self.num_classes).float()


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weights that give every class the same total weight: ``n / (k * count)``."""
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))
