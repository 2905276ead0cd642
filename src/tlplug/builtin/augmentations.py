"""Built-in training augmentations.

Three phases (see the ``tlplug_register_augmentations`` hook): torchvision v2 transforms on
the ``uint8`` image (``pixels``: crop, flip, the colour operations), random erasing on the
normalized image (``tensor``), and mixup and cutmix on a whole batch of images and soft
targets on the training device (``batch``). Every random draw uses torch's global generator,
which the engine seeds per image and per epoch, so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from tlplug import hookimpl
from tlplug.errors import OptionError
from tlplug.plugins.marks import augmentation

if TYPE_CHECKING:
    import torch

AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")


@hookimpl
def tlplug_register_augmentations(register):
    register("flip", flip)
    register("crop", crop)
    register("randaugment", randaugment)
    register("trivialaugment", trivialaugment)
    register("autoaugment", autoaugment)
    register("color-jitter", color_jitter)
    register("random-erasing", random_erasing)
    register("mixup", mixup)
    register("cutmix", cutmix)


# --- pixels: uint8 (3, S, S) images ---------------------------------------------------------


def flip_outcomes(img_size: int, *, p: float = 0.5):
    """The two results of :func:`flip`: the image as it is, and mirrored."""
    from torchvision.transforms.v2 import functional

    return [(1 - p, None), (p, functional.horizontal_flip)]


def flip_batched(transform):
    """:func:`flip` on a whole batch, each image with its own draw."""
    from tlplug.data.batched import Flip

    return Flip(transform.p)


def crop_batched(transform):
    """:func:`crop` on a whole batch, each image with its own window."""
    from tlplug.data.batched import ResizedCrop

    return ResizedCrop(transform)


def color_jitter_batched(transform):
    """:func:`color_jitter` on a whole batch, each image with its own factors and order."""
    from tlplug.data.batched import ColorJitter

    return ColorJitter(transform)


@augmentation(phase="pixels", order=20, outcomes=flip_outcomes, batched=flip_batched)
def flip(img_size: int, *, p: float = 0.5):
    """Horizontal flip with probability ``p``."""
    _check(0 <= p <= 1, "flip", "p", f"must be in [0, 1], got {p}")
    from torchvision.transforms import v2

    return v2.RandomHorizontalFlip(p)


@augmentation(phase="pixels", order=10, batched=crop_batched, whole=True)
def crop(
    img_size: int,
    *,
    scale: tuple[float, ...] = (0.35, 1.0),
    ratio: tuple[float, ...] = (3 / 4, 4 / 3),
):
    """Random resized crop: a random area (``scale``) and aspect (``ratio``) of the whole
    image, resized to the training size."""
    scale = _range("crop", "scale", scale, fraction=True)
    ratio = _range("crop", "ratio", ratio, fraction=False)
    from torchvision.transforms import v2

    return v2.RandomResizedCrop(img_size, scale=scale, ratio=ratio, antialias=True)


@augmentation(phase="pixels", order=30)
def randaugment(img_size: int, *, num_ops: int = 2, magnitude: int = 9):
    """RandAugment: ``num_ops`` random operations at strength ``magnitude`` (0-30)."""
    _check(num_ops >= 0, "randaugment", "num_ops", f"must be at least 0, got {num_ops}")
    _check(0 <= magnitude <= 30, "randaugment", "magnitude", f"must be in 0..30, got {magnitude}")
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


@augmentation(phase="pixels", order=30)
def trivialaugment(img_size: int):
    """TrivialAugment Wide: one random operation at a random strength."""
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide()


@augmentation(phase="pixels", order=30)
def autoaugment(img_size: int, *, policy: Literal["imagenet", "cifar10", "svhn"] = "imagenet"):
    """AutoAugment: the operations learned on ImageNet, CIFAR-10 or SVHN (``policy``)."""
    _check(
        policy in AUTOAUGMENT_POLICIES,
        "autoaugment",
        "policy",
        f"must be one of {', '.join(AUTOAUGMENT_POLICIES)}, got {policy!r}",
    )
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy(policy))


@augmentation(phase="pixels", order=30, batched=color_jitter_batched)
def color_jitter(
    img_size: int,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.0,
):
    """Random brightness, contrast, saturation and hue changes."""
    for name, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        _check(value >= 0, "color-jitter", name, f"must be at least 0, got {value}")
    _check(0 <= hue <= 0.5, "color-jitter", "hue", f"must be in [0, 0.5], got {hue}")
    from torchvision.transforms import v2

    return v2.ColorJitter(brightness, contrast, saturation, hue)


# --- tensor: normalized float (3, S, S) images ----------------------------------------------


@augmentation(phase="tensor", order=50)
def random_erasing(
    img_size: int,
    *,
    p: float = 0.25,
    scale: tuple[float, ...] = (0.02, 1 / 3),
    ratio: tuple[float, ...] = (0.3, 3.3),
    value: float | str = "random",
):
    """Random erasing: with probability ``p``, a random box of the image replaced.

    The box covers a fraction ``scale`` of the image with aspect ``ratio``; ``value`` is
    ``random`` (per-pixel normal noise, as timm's ``mode='pixel'``) or a number in
    normalized units (0 is the dataset's mean colour).
    """
    _check(0 <= p <= 1, "random-erasing", "p", f"must be in [0, 1], got {p}")
    scale = _range("random-erasing", "scale", scale, fraction=True)
    ratio = _range("random-erasing", "ratio", ratio, fraction=False)
    if isinstance(value, str):
        _check(
            value == "random",
            "random-erasing",
            "value",
            f"must be 'random' or a number, got {value!r}",
        )
    else:
        value = float(value)
    from torchvision.transforms import v2

    return v2.RandomErasing(p=p, scale=scale, ratio=ratio, value=value)


# --- batch: (images (B, 3, S, S), targets (B, C)) on the training device --------------------


@augmentation(phase="batch")
def mixup(img_size: int, *, alpha: float = 0.2):
    """Mixup: each image blended with another of the batch, targets in the same proportion."""
    _check(alpha > 0, "mixup", "alpha", f"must be greater than 0, got {alpha}")
    return MixUp(alpha)


@augmentation(phase="batch")
def cutmix(img_size: int, *, alpha: float = 1.0):
    """CutMix: a box from another image of the batch pasted in, targets by the box's area."""
    _check(alpha > 0, "cutmix", "alpha", f"must be greater than 0, got {alpha}")
    return CutMix(alpha)


def sample_lam(alpha: float) -> float:
    """Draw ``lam ~ Beta(alpha, alpha)`` with torch's global CPU generator, in float64."""
    import torch

    concentration = torch.tensor(float(alpha), dtype=torch.float64)
    return float(torch.distributions.Beta(concentration, concentration).sample())


class MixUp:
    """``lam * x + (1 - lam) * x.flip(0)`` for the images and the targets alike, with
    ``lam ~ Beta(alpha, alpha)`` drawn once per batch."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        """Return the mixed ``(images, targets)``; the inputs are left unchanged."""
        lam = sample_lam(self.alpha)
        return _blend(images, lam), _blend(targets, lam)

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha})"


class CutMix:
    """A box of the batch flipped along its first axis pasted into each image; targets
    mixed by the share of the image the box covers.

    ``lam ~ Beta(alpha, alpha)`` sets the box's area ratio ``1 - lam``; a box cut off by the
    image's border pastes less, and ``lam`` is corrected to the area actually pasted.
    """

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        """Return the mixed ``(images, targets)``; the inputs are left unchanged."""
        height, width = images.shape[-2:]
        top, bottom, left, right = self.box(height, width, sample_lam(self.alpha))
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[..., top:bottom, left:right].flip(0)
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mixed, _blend(targets, lam)

    @staticmethod
    def box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of a box of area ratio about ``1 - lam`` centred at a
        random point of the image, clipped to it."""
        import torch

        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
        return top, bottom, left, right

    def __repr__(self) -> str:
        return f"CutMix(alpha={self.alpha})"


def _blend(batch: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * batch + (1 - lam) * batch.flip(0)``."""
    return batch.mul(lam).add_(batch.flip(0), alpha=1.0 - lam)


# --- option checks ---------------------------------------------------------------------------


def _check(ok: bool, name: str, option: str, problem: str) -> None:
    if not ok:
        raise OptionError(f"augmentation '{name}' option '{option}' {problem}")


def _range(name: str, option: str, values: Sequence[float], *, fraction: bool) -> tuple:
    """Check a ``MIN,MAX`` option: two numbers, ``MIN <= MAX``; a ``fraction`` lies in
    ``[0, 1]`` with ``MAX > 0``, anything else is positive."""
    values = tuple(float(v) for v in values)
    shown = ",".join(f"{v:g}" for v in values) or "none"
    _check(len(values) == 2, name, option, f"needs two numbers MIN,MAX, got {shown}")
    low, high = values
    _check(low <= high, name, option, f"needs MIN <= MAX, got {shown}")
    if fraction:
        _check(low >= 0 and 0 < high <= 1, name, option, f"must lie in [0, 1], got {shown}")
    else:
        _check(low > 0, name, option, f"must be positive, got {shown}")
    return low, high
