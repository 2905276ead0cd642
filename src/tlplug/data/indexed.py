"""Images of a data set read by index (a torchvision or Hugging Face data set), and the
splits made from such sets: their own train/val/test splits, or a validation split held
out of the training images when a set has none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image

from tlplug.data.folders import DEFAULT_VAL_SPLIT, stratified_split
from tlplug.data.images import DECODE_ERRORS, cannot_decode, to_rgb
from tlplug.data.sources import Splits
from tlplug.errors import DataError


@attrs.frozen
class IndexedImages:
    """Items ``indices`` of a data set, whose ``read(index)`` gives the image (a PIL image,
    an array or a tensor), with their labels; ``where`` names the set in messages."""

    read: Callable[[int], Any]
    indices: tuple[int, ...]
    labels: tuple[int, ...]
    where: str

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as RGB; DecodeError when the set cannot give it."""
        item = self.indices[index]
        try:
            return to_rgb(as_pil(self.read(item)))
        except DECODE_ERRORS as exc:
            raise cannot_decode(f"{self.where} #{item}", exc) from None

    def subset(self, positions: Sequence[int]) -> IndexedImages:
        """The images at ``positions`` of this list."""
        return IndexedImages(
            self.read,
            tuple(self.indices[p] for p in positions),
            tuple(self.labels[p] for p in positions),
            self.where,
        )


def as_pil(image: Any) -> Image.Image:
    """A PIL image from what a data set gives: a PIL image, an HxW(xC) uint8 array, or a
    CxHxW tensor."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.numpy().transpose(1, 2, 0) if image.ndim == 3 else image.numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def splits_of(
    classes: tuple[str, ...],
    train: IndexedImages,
    val: IndexedImages | None,
    test: IndexedImages | None,
    val_split: float | None,
    seed: int,
    info: dict[str, Any],
) -> Splits:
    """The run's splits of a data set: its own validation split when it has one, else
    ``val_split`` of the training images held out per class (as for a folder)."""
    if len(classes) < 2:
        raise DataError(f"{train.where} has {len(classes)} class(es); a classifier needs 2")
    if val is None or not len(val):
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        by_class: dict[str, list[int]] = {name: [] for name in classes}
        for position, label in enumerate(train.labels):
            by_class[classes[label]].append(position)
        kept, held = stratified_split(by_class, classes, fraction, seed)
        if not held and fraction > 0:
            raise DataError(f"too few images in {train.where} to hold out a validation split")
        train, val = train.subset([p for p, _ in kept]), train.subset([p for p, _ in held])
        info = {**info, "layout": "split", "val_split": fraction}
    else:
        info = {**info, "layout": "own splits"}
    return Splits(classes, train, val, info, test=test if test is not None and len(test) else None)
