"""Torch datasets and loaders over an :class:`~tlplug.data.sources.ImageList`.

Training order and augmentation randomness are functions of (seed, epoch) alone: the
sampler draws each epoch's permutation from a generator seeded for that epoch and hands
every index to the dataset with a seed of its own, which seeds the transform. So an epoch
looks the same however many loader workers there are, and a run resumed after epoch k
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlplug.data.sources import ImageList


class TransformedImages(Dataset):
    """``(tensor, label)`` pairs: the images of an ImageList through ``base`` (decode,
    resize, crop; deterministic) and then ``transform`` (augmentations, normalization).

    Once ``decoded`` is set (:class:`~tlplug.data.decoded.DecodedImages`), the base
    transform's output comes from there and each image is decoded once.
    """

    def __init__(self, images: ImageList, base: Callable, transform: Callable):
        self.images, self.base, self.transform = images, base, transform
        self.decoded = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.decoded is not None:
            pixels = self.decoded.get(index)
        else:
            pixels = self.base(self.images.load(index))
        if seed is None:
            return self.transform(pixels), self.images.labels[index]
        with torch.random.fork_rng(devices=()):  # leave the training loop's RNG alone
            torch.manual_seed(seed)
            return self.transform(pixels), self.images.labels[index]


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)`` in an order drawn from ``(seed, epoch)`` alone."""

    def __init__(self, size: int, seed: int, shuffle: bool):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order and item seeds of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator) if self.shuffle else None
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        for position in range(self.size):
            index = int(order[position]) if order is not None else position
            yield index, int(seeds[position])


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch`` of a run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch) % 2**63


def default_workers(device_type: str = "cuda") -> int:
    """Loader processes when none are asked for.

    Feeding a GPU: one per core but one, at most 8. Training on the CPU, decoding competes
    with the model for the same cores, so small machines decode in the training process
    and larger ones spare a quarter of their cores, at most 4.
    """
    cores = os.cpu_count() or 1
    if device_type == "cuda":
        return min(8, max(0, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int,
    seed: int,
    pin_memory: bool,
) -> DataLoader:
    """A loader over ``dataset`` with an :class:`EpochSampler` (shuffled when training); a
    ragged last training batch is dropped. Call ``loader.sampler.set_epoch`` per epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle=train),
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # decoding needs no thread pool; the cores are the model's
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
