"""Torch datasets and loaders over an :class:`~tlplug.data.sources.ImageList`.

Training order and augmentation randomness are functions of (seed, epoch) alone: the
sampler draws each epoch's permutation from a generator seeded for that epoch and hands
every index to the dataset with a seed of its own, which seeds the transform. So an epoch
looks the same however many loader workers there are, and a run resumed after epoch k
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import copy
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlplug.compute.distributed import SOLO, World
from tlplug.compute.seeding import epoch_seed
from tlplug.data.batched import collate
from tlplug.data.sources import DecodeError, ImageList, Splits
from tlplug.errors import DataError

if TYPE_CHECKING:
    from tlplug.data.pipeline import Pipeline
    from tlplug.recipe import Recipe


class TransformedImages(Dataset):
    """``(tensor, label)`` pairs: the images of an ImageList through ``base`` (decode,
    resize, crop; deterministic) and then ``transform`` (augmentations; None: none).

    Once ``decoded`` is set (:class:`~tlplug.data.decoded.DecodedImages`), the base
    transform's output comes from there and each image is decoded once.

    An image that cannot be decoded is replaced by the next image of its class that can;
    with ``failures`` set, the file and the reason are appended to that file (one line
    each, from whichever process decoded it) for the run's summary.
    """

    def __init__(
        self, images: ImageList, base: Callable, transform: Callable | None, random: bool = True
    ):
        self.images, self.base, self.transform = images, base, transform
        self.random = random  # False: the transform draws nothing, so items need no seeding
        self.decoded = None
        self.failures: Path | None = None

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, index: int) -> torch.Tensor:
        """The base transform's output for image ``index``, or for a stand-in of its class."""
        try:
            return self._decode(index)
        except DecodeError as exc:
            self._record(exc)
        labels = self.images.labels
        for candidate in [*range(index + 1, len(self)), *range(index)]:
            if labels[candidate] != labels[index]:
                continue
            try:
                return self._decode(candidate)
            except DecodeError as exc:
                self._record(exc)
        raise DataError(f"no image of class {labels[index]} can be decoded; check the data")

    def _decode(self, index: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.decoded.get(index)
        return self.base(self.images.load(index))

    def _record(self, exc: DecodeError) -> None:
        if self.failures is not None:
            with open(self.failures, "a", encoding="utf-8") as log:
                log.write(f"{exc.path}\t{exc.reason}\n")

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        pixels = self.pixels(index)
        if self.transform is None:
            return pixels, self.images.labels[index]
        if seed is None or not self.random:
            return self.transform(pixels), self.images.labels[index]
        with torch.random.fork_rng(devices=()):  # leave the training loop's RNG alone
            # The CPU generator alone: torch.manual_seed also queues a CUDA seeding with a
            # captured stack trace on every call (1.3 ms an image, a third of a probe's time).
            torch.random.default_generator.manual_seed(int(seed))
            return self.transform(pixels), self.images.labels[index]


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)`` in an order drawn from ``(seed, epoch)`` alone.

    With ``weights``, each epoch draws ``size`` indices with replacement in proportion to
    them (class balancing) instead of a permutation. Sharded over the processes of a
    data-parallel run (:meth:`shard`), each process yields its contiguous share of every
    global batch of the same draw, so each step's global batch is the same images, with
    the same item seeds, as in one process.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, weights: torch.Tensor | None = None):
        self.size, self.seed, self.shuffle, self.weights = size, seed, shuffle, weights
        self.epoch = 0
        self.rank, self.processes, self.global_batch = 0, 1, size

    def set_epoch(self, epoch: int) -> None:
        """Use the order and item seeds of ``epoch``."""
        self.epoch = epoch

    def shard(self, rank: int, processes: int, global_batch: int) -> None:
        """Yield process ``rank``'s share (of ``processes``) of each global batch of
        ``global_batch`` items; a ragged last global batch is left out (as the training
        loader's ``drop_last`` leaves it out in one process)."""
        self.rank, self.processes, self.global_batch = rank, processes, global_batch

    def __len__(self) -> int:
        return len(self._shares()) * self._share

    def __iter__(self):
        drawn = self.drawn()
        for start in self._shares():
            yield from drawn[start : start + self._share]

    def own_indices(self) -> torch.Tensor:
        """The image indices this process's share of the epoch holds, in the order
        :meth:`__iter__` yields them (in one process: :meth:`indices`)."""
        order = self.indices()
        if self.processes == 1:
            return order
        return torch.cat([order[start : start + self._share] for start in self._shares()])

    def drawn(self) -> list[tuple[int, int]]:
        """Every ``(index, item_seed)`` of the epoch, in order, whatever the shard."""
        generator = self._generator()
        order = self._order(generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        return list(zip(order, seeds, strict=True))

    @property
    def _share(self) -> int:
        if self.processes == 1:
            return self.size
        return (
            min(self.global_batch, self.size // self.processes * self.processes) // self.processes
        )

    def _shares(self) -> list[int]:
        """Where this process's share of each global batch starts in :meth:`drawn`."""
        if self.processes == 1:
            return [0]
        batch = self._share * self.processes
        return [b + self.rank * self._share for b in range(0, self.size - batch + 1, batch)]

    def indices(self) -> torch.Tensor:
        """The epoch's image indices in the order :meth:`__iter__` yields them."""
        return self._order(self._generator())

    def seeds_by_index(self) -> torch.Tensor:
        """Each image's item seed in the epoch (an image drawn twice: its first draw's; one
        not drawn: a seed of its own, from the same epoch)."""
        generator = self._generator()
        order = self._order(generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        by_index = torch.randint(0, 2**62, (self.size,), generator=generator)
        first = torch.full((self.size,), self.size, dtype=torch.long)
        first.scatter_reduce_(0, order, torch.arange(self.size), reduce="amin")
        drawn = first < self.size
        by_index[drawn] = seeds[first[drawn]]
        return by_index

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        order = torch.randperm(self.size, generator=generator) if self.shuffle else None
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, True, generator=generator)
        return order if order is not None else torch.arange(self.size)


class ViewSampler(Sampler):
    """Yields every index once, in order, with the item seed ``sampler`` gives it in epoch
    :attr:`epoch`: one augmented view of the whole dataset as that epoch draws it."""

    def __init__(self, sampler: EpochSampler):
        self.sampler, self.epoch = sampler, 0

    def __len__(self) -> int:
        return self.sampler.size

    def __iter__(self):
        kept = self.sampler.epoch
        self.sampler.set_epoch(self.epoch)
        try:
            seeds = self.sampler.seeds_by_index().tolist()
        finally:
            self.sampler.set_epoch(kept)
        yield from enumerate(seeds)


def view_loader(train: DataLoader) -> DataLoader:
    """A loader over ``train``'s augmented images, every image once in index order, with the
    item seeds of the epoch its sampler's ``epoch`` names (a :class:`ViewSampler`)."""
    return DataLoader(
        train.dataset,
        batch_size=train.batch_size,
        sampler=ViewSampler(train.sampler),
        num_workers=train.num_workers,
        pin_memory=train.pin_memory,
        worker_init_fn=_seed_worker,
        collate_fn=train.collate_fn,
    )


class OutcomeLoader(DataLoader):
    """Every training image once, in index order, through one of ``transforms`` (the
    deterministic pipelines of :attr:`~tlplug.data.pipeline.Pipeline.outcomes`): the one
    :meth:`choose` names last."""

    def __init__(self, dataset: TransformedImages, transforms: list, **kwargs):
        super().__init__(dataset, **kwargs)
        self.transforms = transforms

    def choose(self, outcome: int) -> None:
        """Give the images through ``transforms[outcome]`` from the next pass on."""
        self.dataset.transform = self.transforms[outcome]


def outcome_loader(plain: DataLoader, transforms: list) -> OutcomeLoader:
    """An :class:`OutcomeLoader` over the images of ``plain`` (the run's loader of the
    training images in order) and with its settings."""
    dataset = copy.copy(plain.dataset)  # its own transform; the decoded images shared
    dataset.random = False
    return OutcomeLoader(
        dataset,
        transforms,
        batch_size=plain.batch_size,
        sampler=plain.sampler,
        num_workers=plain.num_workers,
        pin_memory=plain.pin_memory,
        worker_init_fn=_seed_worker,
    )


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
    weights: torch.Tensor | None = None,
    world: World = SOLO,
) -> DataLoader:
    """A loader over ``dataset`` with an :class:`EpochSampler` (shuffled when training); a
    ragged last training batch is dropped. Call ``loader.sampler.set_epoch`` per epoch.
    With several processes (``world``), ``batch_size`` is the global batch and the loader
    gives this process's share of each (:meth:`EpochSampler.shard`). Items whose images
    are :class:`~tlplug.data.batched.Drawn` are batched as one (:func:`collate`)."""
    sampler = EpochSampler(len(dataset), seed, shuffle=train, weights=weights)
    if world.parallel:
        sampler.shard(world.rank, world.size, batch_size)
        batch_size = world.per_process(batch_size)  # the sampler left out a ragged batch
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size and not world.parallel,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        collate_fn=collate,
    )


@attrs.frozen
class Loaders:
    """A run's loaders: training (augmented), validation, the training images as a feature
    cache holds them (deterministic augmentations only), and the test images if the data
    has them."""

    train: DataLoader
    val: DataLoader
    plain: DataLoader
    test: DataLoader | None = None
    workers: int = 0

    def all(self) -> list[DataLoader]:
        """Every loader there is."""
        return [x for x in (self.train, self.val, self.plain, self.test) if x is not None]


def make_loaders(
    splits: Splits,
    pipeline: Pipeline,
    recipe: Recipe,
    device: Any,
    batch_size: int,
    world: World = SOLO,
) -> Loaders:
    """The loaders of a run: ``splits`` through ``pipeline``, batches of ``batch_size``.
    In a data-parallel ``world``, ``batch_size`` is the global batch: the training loader
    yields this process's share of each (:meth:`EpochSampler.shard`); the other loaders
    give every image to every process (validation and the caches see the whole set)."""
    workers = default_workers(device.type) if recipe.workers is None else recipe.workers
    common = dict(workers=workers, seed=recipe.seed, pin_memory=device.type == "cuda")
    weights = balanced_weights(splits.train.labels) if recipe.balance == "sampler" else None

    def loader(images, transform=None, train=False):
        base = pipeline.training_base if train else pipeline.base
        dataset = TransformedImages(images, base, transform, random=train and pipeline.seeded)
        return make_loader(
            dataset,
            batch_size,
            train=train,
            weights=weights if train else None,
            world=world if train else SOLO,
            **common,
        )

    return Loaders(
        train=loader(splits.train, pipeline.train, train=True),
        val=loader(splits.val),
        plain=loader(splits.train, pipeline.steady),
        test=loader(splits.test) if splits.test is not None else None,
        workers=workers,
    )


def shard_of(loader: DataLoader, world: World) -> tuple[DataLoader, int, int]:
    """This process's contiguous part of a pass over ``loader`` (a loader whose sampler
    yields the same items in every process: validation, the caches' passes), as a loader
    with the same settings, and where that part starts and ends in the pass."""
    items = list(loader.sampler)
    low, high = world.bounds(len(items))[world.rank]
    part = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=items[low:high],
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=_seed_worker,
        collate_fn=loader.collate_fn,
    )
    return part, low, high


def balanced_weights(labels) -> torch.Tensor:
    """Per-image sampling weights that draw every class equally often."""
    labels = torch.as_tensor(list(labels))
    counts = torch.bincount(labels).float()
    return (1.0 / counts)[labels]


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # decoding needs no thread pool; the cores are the model's
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
