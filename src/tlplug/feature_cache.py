"""Training the head on cached features: the frozen backbone runs once per image.

While a stage trains only the head, the backbone is a fixed function: under the ``frozen``
and ``eval`` BatchNorm policies every backbone group runs in eval mode. When the training
images are fixed too (no random augmentation), the backbone's features are computed once,
without autograd, and the head trains on them for the rest of the stage, batch for batch
as the loader would have served them (the same sampler draws the order). A cache larger
than :data:`MEMORY_LIMIT` lives in a file in the run directory, removed with the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlplug.mapped import mapped_tensor
from tlplug.precision import FP32, Numerics

MEMORY_LIMIT = 2 * 2**30  # bytes of features kept in memory; more spill to a file


class Features:
    """Backbone features ``(N, D)`` (or a frozen prefix's outputs ``(N, ...)``) and labels
    ``(N,)`` of every image of a dataset."""

    def __init__(self, values: torch.Tensor, labels: torch.Tensor, file: Path | None = None):
        self.values, self.labels, self.file = values, labels, file

    def batches(self, batch_sampler) -> CachedBatches:
        """The ``(features, labels)`` batches ``batch_sampler`` picks, as a sized iterable."""
        return CachedBatches(self, batch_sampler)

    def release(self) -> None:
        """Drop the features and remove their file, if any."""
        self.values = self.labels = None
        if self.file is not None:
            self.file.unlink(missing_ok=True)


class CachedBatches:
    """Batches of cached features in the order of a loader's batch sampler."""

    def __init__(self, features: Features, batch_sampler):
        self.features, self.batch_sampler = features, batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.batch_sampler.sampler.indices()  # an EpochSampler's, item seeds aside
        size = self.batch_sampler.batch_size
        for start in range(0, len(self) * size, size):
            index = order[start : start + size]
            yield self.features.values[index], self.features.labels[index]


@torch.inference_mode()
def extract(
    backbone: nn.Module,
    loader: DataLoader,
    device: torch.device,
    spill: Path,
    numerics: Numerics = FP32,
    name: str = "",
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Features:
    """Run ``backbone`` in eval mode once over ``loader`` (in dataset order), in the run's
    precision; the features are kept as fp32. ``spill`` names the file a large cache
    goes to, with ``{}`` standing for ``name``. With ``forward`` (a frozen prefix), its
    outputs are kept instead, in the dtype it gives."""
    run = forward or (lambda images: backbone(images).float())
    was_training = backbone.training
    backbone.eval()
    size = len(loader.dataset)
    values = labels = None
    file = None
    start = 0
    try:
        for images, targets in loader:
            with numerics.autocast(device):
                out = run(numerics.inputs(images, device)).cpu()
            if values is None:
                spill_file = Path(str(spill).format(name))
                values, file = _allocate((size, *out.shape[1:]), out.dtype, spill_file)
                labels = torch.empty(size, dtype=torch.long)
            values[start : start + len(out)] = out
            labels[start : start + len(out)] = torch.as_tensor(targets)
            start += len(out)
    finally:
        backbone.train(was_training)
    return Features(values, labels, file)


def _allocate(
    shape: tuple[int, ...], dtype: torch.dtype, spill: Path
) -> tuple[torch.Tensor, Path | None]:
    count = math.prod(shape)
    if count * dtype.itemsize <= MEMORY_LIMIT:
        return torch.empty(shape, dtype=dtype), None
    return mapped_tensor(spill, count, dtype).view(shape), spill
