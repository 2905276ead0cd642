"""Decoding each image once: resized ``uint8`` pixels kept for later epochs.

The base transform (decode, resize, center crop; or, for a random resized crop from the
whole image, decode and resize the short side, the aspect kept up to 3:2) is deterministic,
so its output is kept per image the first time any process computes it. Each image has a
slot of the base's ``slot`` shape: a whole image is stored with its long side across (an
upright one transposed) and its size alongside. Training in the main process, the
pixels live in memory; with loader workers they live in a memory-mapped file in the run
directory, which every worker maps and fills. Augmentations and normalization still run
every epoch on the kept pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tlplug.data.mapped import mapped_tensor
from tlplug.data.sources import ImageList


class DecodedImages:
    """The base-transformed pixels of an ImageList, computed once per image. ``base`` has
    a ``slot``: the ``(3, rows, columns)`` that holds any of its outputs."""

    def __init__(self, images: ImageList, base: Callable, file: Path | None):
        count = len(images)
        shape = (count, *base.slot)
        if file is None:
            self.sizes = torch.zeros((count, 2), dtype=torch.int16)
            self.filled = torch.zeros(count, dtype=torch.bool)
            self.pixels = torch.empty(shape, dtype=torch.uint8)
        else:
            mapped = mapped_tensor(file, self.nbytes(images, base), torch.uint8)
            self.sizes = mapped[: 4 * count].view(torch.int16).view(count, 2)
            self.filled = mapped[4 * count : 5 * count].view(torch.bool)
            self.pixels = mapped[5 * count :].view(shape)
        self.images, self.base, self.file = images, base, file

    @staticmethod
    def nbytes(images: ImageList, base: Callable) -> int:
        """Bytes the pixels of ``images`` through ``base`` take, with their sizes."""
        return len(images) * (math.prod(base.slot) + 5)

    def get(self, index: int) -> torch.Tensor:
        """The pixels of image ``index``, decoding it the first time."""
        if not self.filled[index]:
            image = self.base(self.images.load(index))
            height, width = image.shape[-2:]
            stored = image.transpose(-2, -1) if height > width else image
            self.pixels[index, :, : stored.shape[-2], : stored.shape[-1]] = stored
            self.sizes[index] = torch.tensor([height, width])
            self.filled[index] = True
        height, width = self.sizes[index].tolist()
        if height > width:
            return self.pixels[index, :, :width, :height].transpose(-2, -1).contiguous()
        return self.pixels[index, :, :height, :width].clone()

    def remove(self) -> None:
        """Delete the backing file, if any."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)


def decoding_plan(loaders: Sequence[DataLoader]) -> dict[str, Any]:
    """Whether the loaders' images are decoded once and kept: when their pixels take at
    most a quarter of the machine's memory. JSON-ready, for config.json."""
    kept = {_key(loader): loader.dataset for loader in loaders}
    total = sum(DecodedImages.nbytes(d.images, d.base) for d in kept.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"kept": total <= memory / 4, "bytes": total}


def keep_decoded(loaders: Sequence[DataLoader], folder: Path) -> list[DecodedImages]:
    """Give the loaders' datasets a decoded-image cache, one per image list and base
    transform; with loader workers it is a memory-mapped file in ``folder`` that they
    fill together."""
    shared = loaders[0].num_workers > 0
    caches: dict[tuple, DecodedImages] = {}
    for loader in loaders:
        dataset, key = loader.dataset, _key(loader)
        if key not in caches:
            file = folder / f".pixels-{len(caches)}" if shared else None
            caches[key] = DecodedImages(dataset.images, dataset.base, file)
        dataset.decoded = caches[key]
    return list(caches.values())


def _key(loader: DataLoader) -> tuple:
    """Loaders over the same images through the same base transform share a cache."""
    return id(loader.dataset.images), loader.dataset.base
