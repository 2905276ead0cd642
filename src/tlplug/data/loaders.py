"""Torch datasets and loaders over an :class:`~tlplug.data.sources.ImageList`."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlplug.data.sources import ImageList


class TransformedImages(Dataset):
    """``(tensor, label)`` pairs: the images of an ImageList through a transform."""

    def __init__(self, images: ImageList, transform: Callable):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images.load(index)), self.images.labels[index]


def default_workers() -> int:
    """Loader processes when none are asked for: one core stays with the training loop."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int,
    seed: int,
    pin_memory: bool,
) -> DataLoader:
    """A loader that shuffles (seeded) and drops a ragged last batch when training."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=generator,
    )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
