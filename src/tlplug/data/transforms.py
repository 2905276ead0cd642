"""From PIL image to normalized tensor: the base transform plus training augmentations.

Every image is resized (shorter side to ``img_size / crop_pct``) and center-cropped to
``img_size`` as a uint8 tensor; training augmentations act on that tensor. Images travel
to the device as uint8 batches (a quarter of the bytes) and are normalized there with the
backbone's mean and std (:class:`Normalize`, applied by
:meth:`~tlplug.compute.precision.Numerics.inputs`); only a tensor-phase augmentation, which works on
normalized images, has them normalized one by one in the loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_modes_mapping

from tlplug.model.backbone import DataConfig
from tlplug.plugins.marks import augmentation

__all__ = [
    "BaseTransform",
    "Normalize",
    "OneOf",
    "augmentation",
    "base_transform",
    "build_transforms",
    "eval_transform",
    "normalize",
]


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
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def base_transform(config: DataConfig, img_size: int) -> BaseTransform:
    """Resize, center crop and convert an RGB PIL image to a ``uint8`` tensor."""
    resize = max(img_size, int(img_size / config.crop_pct))
    resample = pil_modes_mapping[InterpolationMode(config.interpolation)]
    return BaseTransform(resize, img_size, resample)


@attrs.frozen
class Normalize:
    """Scale uint8 images (one ``(3, H, W)`` or a batch) to [0, 1] floats and normalize
    them with ``mean`` and ``std`` on the device they are on. Float images are taken as
    already normalized and returned unchanged."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            return images
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


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
