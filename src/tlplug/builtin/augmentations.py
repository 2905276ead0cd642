"""Built-in training augmentations, as torchvision v2 transforms on uint8 image tensors."""

from __future__ import annotations

from torchvision.transforms import v2

from tlplug import hookimpl


@hookimpl
def tlplug_register_augmentations(register):
    register("flip", flip)
    register("crop", crop)
    register("randaugment", randaugment)
    register("trivialaugment", trivialaugment)
    register("color-jitter", color_jitter)


def flip(img_size: int, *, p: float = 0.5):
    """Horizontal flip with probability ``p``."""
    return v2.RandomHorizontalFlip(p)


def crop(
    img_size: int,
    *,
    scale: tuple[float, ...] = (0.35, 1.0),
    ratio: tuple[float, ...] = (3 / 4, 4 / 3),
):
    """Random resized crop: a random area (``scale``) and aspect (``ratio``), resized back."""
    return v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)


def randaugment(img_size: int, *, num_ops: int = 2, magnitude: int = 9):
    """RandAugment: ``num_ops`` random operations at strength ``magnitude`` (0-30)."""
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


def trivialaugment(img_size: int):
    """TrivialAugment Wide: one random operation at a random strength."""
    return v2.TrivialAugmentWide()


def color_jitter(
    img_size: int,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.0,
):
    """Random brightness, contrast, saturation and hue changes."""
    return v2.ColorJitter(brightness, contrast, saturation, hue)
