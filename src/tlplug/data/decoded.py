"""Decoding each image once: resized, center-cropped ``uint8`` pixels kept for later epochs.

The base transform (decode, resize, center crop) is deterministic, so its output is kept
per image the first time any process computes it. Training in the main process, the
pixels live in memory; with loader workers they live in a memory-mapped file in the run
directory, which every worker maps and fills. Augmentations and normalization still run
every epoch on the kept pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tlplug.data.mapped import mapped_tensor
from tlplug.data.sources import ImageList


class DecodedImages:
    """The base-transformed pixels of an ImageList, computed once per image."""

    def __init__(self, images: ImageList, base: Callable, size: int, file: Path | None):
        shape = (len(images), 3, size, size)
        count = len(images) * 3 * size * size
        if file is None:
            self.pixels = torch.empty(shape, dtype=torch.uint8)
            self.filled = torch.zeros(len(images), dtype=torch.bool)
        else:
            mapped = mapped_tensor(file, count + len(images), torch.uint8)
            self.pixels = mapped[:count].view(shape)
            self.filled = mapped[count:].view(torch.bool)
        self.images, self.base, self.file = images, base, file

    @staticmethod
    def nbytes(images: ImageList, size: int) -> int:
        """Bytes the pixels of ``images`` take at ``size``."""
        return len(images) * (3 * size * size + 1)

    def get(self, index: int) -> torch.Tensor:
        """The pixels of image ``index``, decoding it the first time."""
        if not self.filled[index]:
            self.pixels[index] = self.base(self.images.load(index))
            self.filled[index] = True
        return self.pixels[index].clone()

    def remove(self) -> None:
        """Delete the backing file, if any."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)


def decoding_plan(loaders: Sequence[DataLoader], size: int) -> dict[str, Any]:
    """Whether the loaders' images are decoded once and kept: when their pixels take at
    most a quarter of the machine's memory. JSON-ready, for config.json."""
    lists = {id(loader.dataset.images): loader.dataset.images for loader in loaders}
    total = sum(DecodedImages.nbytes(images, size) for images in lists.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"kept": total <= memory / 4, "bytes": total}


def keep_decoded(loaders: Sequence[DataLoader], size: int, folder: Path) -> list[DecodedImages]:
    """Give the loaders' datasets a decoded-image cache, one per image list; with loader
    workers it is a memory-mapped file in ``folder`` that they fill together."""
    shared = loaders[0].num_workers > 0
    caches: dict[int, DecodedImages] = {}
    for loader in loaders:
        dataset = loader.dataset
        key = id(dataset.images)
        if key not in caches:
            file = folder / f".pixels-{len(caches)}" if shared else None
            caches[key] = DecodedImages(dataset.images, dataset.base, size, file)
        dataset.decoded = caches[key]
    return list(caches.values())
