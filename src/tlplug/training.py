"""One training epoch and one evaluation pass."""

from __future__ import annotations

import math
import time

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlplug.console import Console
from tlplug.errors import TlplugError


@attrs.frozen
class EpochStats:
    """Mean loss, accuracy, images seen and wall time of one pass over a loader."""

    loss: float
    acc: float
    images: int
    seconds: float


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    console: Console,
    epoch: int,
) -> EpochStats:
    """Train for one pass over ``loader``, stepping the LR schedule after every batch."""
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = console.progress(loader, len(loader), f"epoch {epoch} train")
    for step, (images, labels) in enumerate(batches, start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = loss_fn(logits, labels)
        value = loss.item()
        if not math.isfinite(value):
            raise TlplugError(
                f"the loss became {value} at epoch {epoch}, step {step}; try a lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return EpochStats(
        total_loss / max(1, seen), correct / max(1, seen), seen, time.perf_counter() - start
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int
) -> tuple[EpochStats, list[int], list[int]]:
    """Loss and accuracy on ``loader`` in eval mode; also per-class correct and total counts."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    total_loss, seen = 0.0, 0
    correct = [0] * num_classes
    count = [0] * num_classes
    start = time.perf_counter()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        total_loss += loss_fn(logits, labels).item()
        hits = logits.argmax(1) == labels
        for label, hit in zip(labels.tolist(), hits.tolist(), strict=True):
            count[label] += 1
            correct[label] += int(hit)
        seen += len(labels)
    stats = EpochStats(
        total_loss / max(1, seen), sum(correct) / max(1, seen), seen, time.perf_counter() - start
    )
    return stats, correct, count
