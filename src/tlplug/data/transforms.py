"""From PIL image to normalized tensor: the base transform plus training augmentations.

Every image is resized (shorter side to ``img_size / crop_pct``) and center-cropped to
``img_size`` as a uint8 tensor; training augmentations act on that tensor; normalization
with the backbone's mean and std comes last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from tlplug.backbone import DataConfig


def base_transform(config: DataConfig, img_size: int) -> v2.Compose:
    """Resize, center crop and convert a PIL image to a ``uint8`` tensor."""
    resize = max(img_size, int(img_size / config.crop_pct))
    interpolation = InterpolationMode(config.interpolation)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=interpolation, antialias=True),
            v2.CenterCrop(img_size),
            v2.PILToTensor(),
        ]
    )


def normalize(config: DataConfig) -> v2.Compose:
    """Scale a ``uint8`` tensor to float and normalize with the backbone's statistics."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config.mean), list(config.std))]
    )


def build_transforms(
    config: DataConfig,
    img_size: int,
    pixels: Sequence[Callable] = (),
    tensors: Sequence[Callable] = (),
) -> tuple[v2.Compose, v2.Compose, v2.Compose]:
    """Return ``(base, train, eval)``: the base transform, then what training applies to its
    output (the ``pixels`` augmentations, normalization, the ``tensors`` augmentations) and
    what evaluation applies."""
    norm = normalize(config)
    train = v2.Compose([*pixels, norm, *tensors])
    return base_transform(config, img_size), train, norm


def augmentation(*, phase: str = "pixels", order: float = 50):
    """Mark an augmentation factory with where it acts and where it goes in its phase.

    ``phase``: ``"pixels"`` (uint8 image), ``"tensor"`` (normalized float image) or
    ``"batch"`` (``(images, targets)`` on the device); ``order``: lower runs first
    (built-ins: crops 10, flips 20, colour operations 30).
    """

    def mark(factory):
        factory.phase, factory.order = phase, order
        return factory

    return mark


class OneOf:
    """Batch-level augmentations of which each batch gets one, chosen with torch's RNG."""

    def __init__(self, choices: Sequence[Callable]):
        self.choices = list(choices)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        pick = int(torch.randint(len(self.choices), ()))
        return self.choices[pick](images, targets)


def eval_transform(config: DataConfig, img_size: int) -> v2.Compose:
    """From PIL image to the normalized tensor evaluation and prediction use."""
    return v2.Compose([base_transform(config, img_size), normalize(config)])
