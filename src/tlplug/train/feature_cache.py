"""Training the head on cached features: the frozen backbone runs once per image.

While a stage trains only the head, the backbone is a fixed function: under the ``frozen``
and ``eval`` BatchNorm policies every backbone group runs in eval mode. So the backbone's
features are computed once, without autograd, and the head trains on them for the rest of
the stage, batch for batch as the loader would have served them (the same sampler draws
the order). With random augmentation, K augmented views are cached, view k drawn with
exactly the item seeds epoch k of the stage would use; epochs after the K-th cycle through
them. A cache larger than :data:`MEMORY_LIMIT` lives in a file in the run directory,
removed with the cache. When the run distils a teacher, the teacher's logits on the same
images are cached beside the features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlplug.compute.distributed import SOLO, World
from tlplug.compute.precision import FP32, Numerics
from tlplug.data.loaders import shard_of
from tlplug.data.mapped import mapped_tensor

MEMORY_LIMIT = 2 * 2**30  # bytes of features kept in memory; more spill to a file


class Features:
    """Backbone features ``(N, D)`` (or a frozen prefix's outputs ``(N, ...)``) and labels
    ``(N,)`` of every image of a dataset; or ``views`` augmented draws of them,
    ``(views, N, D)``, the draw ``k`` made with the item seeds of epoch
    ``first_epoch + k``; or every outcome of the augmentations, view ``k`` with probability
    ``weights[k]`` (None: the views are equally likely). ``taught``: a teacher's logits on
    the same images, ``(N, C)`` or ``(views, N, C)``, or None."""

    def __init__(
        self,
        values: torch.Tensor,
        labels: torch.Tensor,
        file: Path | None = None,
        views: int = 1,
        first_epoch: int = 0,
        weights: torch.Tensor | None = None,
        taught: torch.Tensor | None = None,
    ):
        self.values, self.labels, self.file = values, labels, file
        self.views, self.first_epoch, self.weights = views, first_epoch, weights
        self.taught = taught

    def view(self, epoch: int) -> torch.Tensor:
        """The features an epoch trains on: with several views ``(K, N, ...)``, the view
        drawn with the item seeds of ``epoch`` (views cycle after the K epochs from
        :attr:`first_epoch`); else all of them."""
        return self._of_epoch(self.values, epoch)

    def teacher_view(self, epoch: int) -> torch.Tensor | None:
        """The teacher's logits on the images of :meth:`view` (None without a teacher)."""
        return None if self.taught is None else self._of_epoch(self.taught, epoch)

    def _of_epoch(self, values: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.views == 1:
            return values
        return values[(epoch - self.first_epoch) % self.views]

    def batches(self, batch_sampler) -> CachedBatches:
        """The ``(features, labels)`` batches ``batch_sampler`` picks, as a sized iterable;
        ``(features, labels, teacher_logits)`` when a teacher's logits are cached."""
        return CachedBatches(self, batch_sampler)

    def release(self) -> None:
        """Drop the features and remove their file, if any."""
        self.values = self.labels = self.taught = None
        if self.file is not None:
            self.file.unlink(missing_ok=True)


class CachedBatches:
    """Batches of cached features in the order of a loader's batch sampler."""

    def __init__(self, features: Features, batch_sampler):
        self.features, self.batch_sampler = features, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.batch_sampler.sampler.epoch  # an EpochSampler
        values, taught = self.features.view(epoch), self.features.teacher_view(epoch)
        for index in batch_indices(self.batch_sampler):
            batch = values[index], self.features.labels[index]
            yield batch if taught is None else (*batch, taught[index])


def batch_indices(batch_sampler) -> Iterator[torch.Tensor]:
    """The dataset indices of each batch a loader's ``batch_sampler`` (over an
    :class:`~tlplug.data.loaders.EpochSampler`) gives this process in the sampler's epoch."""
    order, size = batch_sampler.sampler.own_indices(), batch_sampler.batch_size
    for start in range(0, len(batch_sampler) * size, size):
        yield order[start : start + size]


class TaughtBatches:
    """A loader's batches with a teacher's logits on their images, ``(images, labels,
    teacher_logits)``; the logits were computed once (``taught``, in dataset order) because
    the loader's images are the same every epoch."""

    def __init__(self, loader: DataLoader, taught: Features):
        self.loader, self.taught = loader, taught

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        indices = batch_indices(self.loader.batch_sampler)
        for index, (images, labels) in zip(indices, self.loader, strict=True):
            yield images, labels, self.taught.values[index]


@torch.inference_mode()
def extract(
    backbone: nn.Module,
    loader: DataLoader,
    device: torch.device,
    spill: Path,
    numerics: Numerics = FP32,
    name: str = "",
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable | None = None,
    views: int = 1,
    choose_view: Callable[[int], None] | None = None,
    world: World = SOLO,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Features:
    """Run ``backbone`` in eval mode over ``loader`` (in dataset order), in the run's
    precision, and keep the features in it (fp32 or bf16). ``spill`` names the file a large
    cache goes to, with ``{}`` standing for ``name``. With ``forward`` (a frozen prefix), its
    outputs are kept instead, in the dtype it gives. ``progress`` wraps the batches (a
    progress bar: ``progress(batches, total)``). With ``views`` > 1 the loader is run that
    many times, ``choose_view(k)`` first (it sets which augmented draw the loader gives),
    and the values are ``(views, N, ...)``. With several processes (``world``), each
    computes a contiguous part of every pass and the parts are shared, so every process
    ends with the whole cache. With a ``teacher``, its logits on the same images are kept
    too (:attr:`Features.taught`)."""
    kept = numerics.dtype or torch.float32
    run = forward or (lambda images: backbone(images).to(kept))
    was_training = backbone.training
    backbone.eval()
    size = len(loader.dataset)
    sharded = world.parallel and size >= world.size  # each process computes its part
    values = labels = file = taught = None
    try:
        for view in range(views):
            if choose_view is not None:
                choose_view(view)
            part, start = (shard_of(loader, world)[:2]) if sharded else (loader, 0)
            for images, targets in progress(part, len(part)) if progress else part:
                images = numerics.inputs(images, device)
                with numerics.autocast(device):
                    out = run(images).cpu()
                if values is None:
                    shape = (size, *out.shape[1:]) if views == 1 else (views, size, *out.shape[1:])
                    values, file = _allocate(shape, out.dtype, Path(str(spill).format(name)))
                    labels = torch.empty(size, dtype=torch.long)
                (values if views == 1 else values[view])[start : start + len(out)] = out
                if teacher is not None:
                    logits = teacher(images).cpu()
                    if taught is None:
                        rows = (size,) if views == 1 else (views, size)
                        taught = torch.empty((*rows, logits.shape[1]), dtype=logits.dtype)
                    (taught if views == 1 else taught[view])[start : start + len(out)] = logits
                labels[start : start + len(out)] = torch.as_tensor(targets)
                start += len(out)
            if sharded:
                world.share_rows(values if views == 1 else values[view], world.bounds(size))
                if taught is not None:
                    world.share_rows(taught if views == 1 else taught[view], world.bounds(size))
        if sharded:
            world.share_rows(labels, world.bounds(size))
    finally:
        backbone.train(was_training)
    return Features(values, labels, file, views, taught=taught)


def _allocate(
    shape: tuple[int, ...], dtype: torch.dtype, spill: Path
) -> tuple[torch.Tensor, Path | None]:
    count = math.prod(shape)
    if count * dtype.itemsize <= MEMORY_LIMIT:
        return torch.empty(shape, dtype=dtype), None
    return mapped_tensor(spill, count, dtype).view(shape), spill
