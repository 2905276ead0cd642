"""From PIL image to normalized tensor: the base transform plus training augmentations.

Every image is resized (shorter side to ``img_size / crop_pct``) and center-cropped to
``img_size`` as a uint8 tensor; training augmentations act on that tensor. A training
pipeline with a random resized crop starts instead from the whole image at that size
(:class:`WholeImage`), so the crop's window can lie anywhere in it, as in timm's training
pipeline. Images travel
to the device as uint8 batches (a quarter of the bytes) and are normalized there with the
backbone's mean and std (:class:`Normalize`, applied by
:meth:`~tlplug.compute.precision.Numerics.inputs`); only a tensor-phase augmentation, which works on
normalized images, has them normalized one by one in the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_modes_mapping

from tlplug.data.batched import Drawn
from tlplug.model.backbone import DataConfig
from tlplug.plugins.marks import augmentation

__all__ = [
    "BaseTransform",
    "Normalize",
    "OneOf",
    "WholeImage",
    "augmentation",
    "base_transform",
    "build_transforms",
    "eval_transform",
    "normalize",
    "whole_image",
]

# The widest aspect a whole image keeps (3:2 photos whole); wider ones lose their sides.
MAX_ASPECT = 1.5


@attrs.frozen
class BaseTransform:
    """Resize a PIL image's shorter side to ``resize``, center-crop ``size`` and return the
    pixels as a ``(3, size, size)`` uint8 tensor.

    The same pixels as torchvision's ``Resize(resize, antialias=True)``, ``CenterCrop(size)``
    and ``PILToTensor()``, computed by PIL directly: the transforms' dispatch cost as much as
    decoding a small JPEG.
    """

    resize: int
    size: int
    resample: int  # a PIL resampling filter

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short != self.resize:
            other = int(self.resize * long / short)
            shape = (self.resize, other) if width <= height else (other, self.resize)
            image = image.resize(shape, self.resample)
            width, height = shape
        top = round((height - self.size) / 2.0)
        left = round((width - self.size) / 2.0)
        image = image.crop((left, top, left + self.size, top + self.size))
        return _pixels(image)

    @property
    def slot(self) -> tuple[int, int, int]:
        """The shape every output has."""
        return (3, self.size, self.size)


@attrs.frozen
class WholeImage:
    """Resize a PIL image's shorter side to ``resize`` and return the whole image, its
    aspect kept, as a ``(3, H, W)`` uint8 tensor; a long side beyond ``max_aspect`` times
    the short one is center-cropped to that.

    The same resize as :class:`BaseTransform` (whose center crop is this image's middle):
    what a random resized crop from the whole image needs.
    """

    resize: int
    resample: int  # a PIL resampling filter
    max_aspect: float = MAX_ASPECT

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        other = int(self.resize * long / short)
        if short != self.resize:
            shape = (self.resize, other) if width <= height else (other, self.resize)
            image = image.resize(shape, self.resample)
        kept = min(other, self.longest)
        if kept < other:
            start = round((other - kept) / 2.0)
            box = (0, start, self.resize, start + kept) if width <= height else None
            image = image.crop(box or (start, 0, start + kept, self.resize))
        return _pixels(image)

    @property
    def longest(self) -> int:
        """The longest side an output has."""
        return int(self.resize * self.max_aspect)

    @property
    def slot(self) -> tuple[int, int, int]:
        """The shape that holds any output, stored with its long side across (an upright
        image transposed): ``(3, resize, longest)``."""
        return (3, self.resize, self.longest)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def _resize_and_filter(config: DataConfig, img_size: int) -> tuple[int, int]:
    resize = max(img_size, int(img_size / config.crop_pct))
    return resize, pil_modes_mapping[InterpolationMode(config.interpolation)]


def base_transform(config: DataConfig, img_size: int) -> BaseTransform:
    """Resize, center crop and convert an RGB PIL image to a ``uint8`` tensor."""
    resize, resample = _resize_and_filter(config, img_size)
    return BaseTransform(resize, img_size, resample)


def whole_image(config: DataConfig, img_size: int) -> WholeImage:
    """Resize (as :func:`base_transform` does) and convert an RGB PIL image to a ``uint8``
    tensor, kept whole up to :data:`MAX_ASPECT`."""
    resize, resample = _resize_and_filter(config, img_size)
    return WholeImage(resize, resample)


@attrs.frozen
class Normalize:
    """Scale uint8 images (one ``(3, H, W)`` or a batch) to [0, 1] floats and normalize
    them with ``mean`` and ``std`` on the device they are on. Float images are taken as
    already normalized and returned unchanged. A batch of stored pixels with each image's
    draws (:class:`~tlplug.data.batched.Drawn`) is augmented first, on its device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Any) -> torch.Tensor:
        if isinstance(images, Drawn):
            scaled = images.augmented()
        elif images.is_floating_point():
            return images
        else:
            scaled = images.to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, device=scaled.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=scaled.device).view(-1, 1, 1)
        return scaled.sub_(mean).div_(std)


def normalize(config: DataConfig) -> Normalize:
    """Normalization with the backbone's statistics."""
    return Normalize(tuple(config.mean), tuple(config.std))


def build_transforms(
    config: DataConfig,
    img_size: int,
    pixels: Sequence[Callable] = (),
    tensors: Sequence[Callable] = (),
) -> tuple[BaseTransform, Callable | None]:
    """Return ``(base, train)``: the base transform and what training applies to its output
    (None: nothing). Evaluation takes the base transform's uint8 pixels as they are.

    Training applies the ``pixels`` augmentations and gives uint8 images, unless there are
    ``tensors`` augmentations: those act on normalized images, so then it normalizes and
    applies them, giving floats.
    """
    if tensors:
        train = v2.Compose([*pixels, normalize(config), *tensors])
    else:
        train = v2.Compose(list(pixels)) if pixels else None
    return base_transform(config, img_size), train


class OneOf:
    """Batch-level augmentations: each batch gets one of ``choices``, chosen with torch's
    RNG, then every one of ``always`` in turn."""

    def __init__(self, choices: Sequence[Callable], always: Sequence[Callable] = ()):
        self.choices, self.always = list(choices), list(always)
        self.last: int | None = None  # the index of the choice the last batch got

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        if self.choices:
            self.last = pick = int(torch.randint(len(self.choices), ()))
            images, targets = self.choices[pick](images, targets)
        for augment in self.always:
            images, targets = augment(images, targets)
        return images, targets


def eval_transform(config: DataConfig, img_size: int) -> v2.Compose:
    """From PIL image to the normalized tensor evaluation and prediction use."""
    return v2.Compose([base_transform(config, img_size), normalize(config)])
