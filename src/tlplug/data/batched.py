"""Training augmentation on a whole batch, each image with its own random draws.

The random parameters of every image are drawn where its pixels are loaded, one image at a
time, under the image's own item seed and by the per-image transform's own ``make_params``
(so a crop window, a flip or a colour factor is exactly what the per-image path draws for
that image in that epoch, however many loader workers or processes there are). The pixel
work then runs once per batch, on the training device: the resized crop (one
``torchvision.ops.roi_align`` for the batch, a window of each image's own), the flips and
the colour changes (each image's factors, in its own order), and the normalization.

A loader item is a :class:`Drawn` (the stored pixels and the draws); :func:`collate` makes
the batch, which :class:`~tlplug.data.transforms.Normalize` augments and normalizes on the
device it was moved to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import default_collate

CROP_WIDTH = 5  # top, left, height, width (of the upright image), stored transposed


class Drawn:
    """Stored uint8 pixels (one ``(3, H, W)`` image or a ``(B, 3, H, W)`` batch) with each
    image's draws (``(K,)`` or ``(B, K)``), and the augmentation they are for."""

    def __init__(self, pixels: torch.Tensor, draws: torch.Tensor, augment: BatchedAugment):
        self.pixels, self.draws, self.augment = pixels, draws, augment

    def __len__(self) -> int:
        return len(self.pixels)

    def to(self, device: Any, non_blocking: bool = False) -> Drawn:
        """The same batch on ``device``."""
        move = {"device": device, "non_blocking": non_blocking}
        return Drawn(self.pixels.to(**move), self.draws.to(**move), self.augment)

    def pin_memory(self) -> Drawn:
        """The same batch in pinned memory (a DataLoader with ``pin_memory`` calls this)."""
        return Drawn(self.pixels.pin_memory(), self.draws.pin_memory(), self.augment)

    def augmented(self) -> torch.Tensor:
        """The augmented batch: float32 ``(B, 3, S, S)`` in [0, 1], on the batch's device."""
        return self.augment.apply(self.pixels, self.draws)


def collate(items: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
    """A DataLoader's ``collate_fn`` for items whose images may be :class:`Drawn`."""
    images, labels = zip(*items, strict=True)
    first = images[0]
    if not isinstance(first, Drawn):
        return default_collate(list(items))
    pixels = torch.stack([image.pixels for image in images])
    draws = torch.stack([image.draws for image in images])
    return Drawn(pixels, draws, first.augment), default_collate(list(labels))


@attrs.frozen(eq=False)
class BatchedAugment:
    """The batched form of a run's image augmentations: an optional resized crop from the
    whole image (``crop``, whose stored images are padded to ``slot``) and then ``ops`` in
    turn, at ``size``.

    Called on one uint8 image (the whole image with a crop, else the base transform's
    square) in a loader, it draws that image's parameters with torch's global generator
    (which the loader seeds per item) and returns a :class:`Drawn`; :meth:`apply` does the
    pixel work for a batch of them.
    """

    size: int
    crop: ResizedCrop | None
    ops: tuple[Any, ...]
    slot: tuple[int, int] | None = None  # (rows, columns) stored images are padded to

    def __call__(self, image: torch.Tensor) -> Drawn:
        draws = self.crop.draw(image) if self.crop is not None else []
        for op in self.ops:
            draws += op.draw(image)
        stored = self._stored(image) if self.crop is not None else image
        return Drawn(stored, torch.tensor(draws, dtype=torch.float32), self)

    def _stored(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` with its long side across (transposed if upright), padded to the slot."""
        if image.shape[-2] > image.shape[-1]:
            image = image.transpose(-2, -1)
        rows, columns = self.slot
        if image.shape[-2] > rows or image.shape[-1] > columns:
            raise ValueError(f"image {tuple(image.shape)} does not fit the slot {self.slot}")
        stored = image.new_zeros((3, rows, columns))
        stored[:, : image.shape[-2], : image.shape[-1]] = image
        return stored

    def apply(self, pixels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Augment a batch of stored uint8 ``pixels`` with their ``draws`` on their device:
        float32 ``(B, 3, size, size)`` in [0, 1]."""
        images = pixels.to(torch.float32)
        at = 0
        if self.crop is not None:
            images = self.crop.apply(images, draws[:, :CROP_WIDTH], self.size)
            at = CROP_WIDTH
        images = images.div_(255.0)
        for op in self.ops:
            images = op.apply(images, draws[:, at : at + op.width])
            at += op.width
        return images

    @property
    def names(self) -> tuple[str, ...]:
        """What runs batched, in order."""
        crop = (self.crop.name,) if self.crop is not None else ()
        return crop + tuple(op.name for op in self.ops)


@attrs.frozen
class ResizedCrop:
    """A random resized crop, batched: the window torchvision's ``RandomResizedCrop``
    draws for each image (``transform``), resampled to the output size by ``roi_align``
    (bilinear, averaging about ``window / size`` samples a pixel when it shrinks)."""

    transform: Any  # a torchvision.transforms.v2.RandomResizedCrop
    name: str = "crop"

    def draw(self, image: torch.Tensor) -> list[float]:
        """``[top, left, height, width, transposed]`` of ``image``'s window."""
        box = self.transform.make_params([image])
        upright = image.shape[-2] > image.shape[-1]
        return [box["top"], box["left"], box["height"], box["width"], float(upright)]

    @staticmethod
    def apply(images: torch.Tensor, draws: torch.Tensor, size: int) -> torch.Tensor:
        """Each image's window of stored float ``images``, resized to ``size``."""
        from torchvision.ops import roi_align

        top, left, height, width, transposed = draws.unbind(1)
        flipped = transposed > 0  # the window in stored (transposed) coordinates
        y0, x0 = torch.where(flipped, left, top), torch.where(flipped, top, left)
        rows, columns = torch.where(flipped, width, height), torch.where(flipped, height, width)
        index = torch.arange(len(images), device=images.device, dtype=images.dtype)
        boxes = torch.stack([index, x0, y0, x0 + columns, y0 + rows], dim=1)
        out = roi_align(images, boxes, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return torch.where(flipped.view(-1, 1, 1, 1), out.transpose(-2, -1), out)


@attrs.frozen
class Flip:
    """A horizontal flip with probability ``p``, batched: the draw
    ``RandomHorizontalFlip(p)`` makes for each image."""

    p: float
    name: str = "flip"
    width: int = 1

    def draw(self, image: torch.Tensor) -> list[float]:
        """``[1.0]`` to flip the image, ``[0.0]`` not to."""
        return [float(not bool(torch.rand(1) >= self.p))]

    @staticmethod
    def apply(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The images whose draw says so, mirrored."""
        flip = (draws[:, 0] > 0).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)


@attrs.frozen
class ColorJitter:
    """Brightness, contrast, saturation and hue changes, batched: the factors and the
    order torchvision's ``ColorJitter`` (``transform``) draws for each image, applied in
    float (the per-image path rounds to uint8 after each change)."""

    transform: Any  # a torchvision.transforms.v2.ColorJitter
    name: str = "color-jitter"
    width: int = 8  # the order of the four changes, then their factors

    def draw(self, image: torch.Tensor) -> list[float]:
        """``[order (4), brightness, contrast, saturation, hue]``; a change not asked for
        has its neutral factor."""
        params = self.transform.make_params([image])
        neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
        factors = [params[f"{k}_factor"] for k in neutral]
        return [float(i) for i in params["fn_idx"]] + [
            n if f is None else float(f) for f, n in zip(factors, neutral.values(), strict=True)
        ]

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Each image through its four changes in its own order."""
        order, factors = draws[:, :4].long(), draws[:, 4:]
        asked = [
            getattr(self.transform, name) is not None
            for name in ("brightness", "contrast", "saturation", "hue")
        ]
        for turn in range(4):
            for change, kernel in enumerate(_CHANGES):
                if not asked[change]:
                    continue
                mask = order[:, turn] == change
                if images.is_cuda:  # the whole batch, masked: no wait for the GPU
                    factor = factors[:, change].view(-1, 1, 1, 1)
                    images = torch.where(mask.view(-1, 1, 1, 1), kernel(images, factor), images)
                    continue
                chosen = mask.nonzero().squeeze(1)  # on a CPU, only the images it changes
                if len(chosen):
                    factor = factors[chosen, change].view(-1, 1, 1, 1)
                    images[chosen] = kernel(images[chosen], factor)
        return images


def _grey(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(-3)
    return (0.2989 * red + 0.587 * green + 0.114 * blue).unsqueeze(-3)


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return images.mul(factor).clamp_(0.0, 1.0)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grey(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def _saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _grey(images), factor)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor + other * (1.0 - factor)).clamp_(0.0, 1.0)


def _hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift each image's hue by its factor (a fraction of the colour wheel), as
    torchvision's ``adjust_hue`` does, through HSV."""
    top, _ = images.max(dim=-3)
    bottom, _ = images.min(dim=-3)
    span = top - bottom
    safe = torch.where(span == 0, torch.ones_like(span), span)
    red, green, blue = images.unbind(-3)
    hue = torch.where(
        top == red,
        ((green - blue) / safe) % 6,
        torch.where(top == green, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = torch.where(span == 0, torch.zeros_like(hue), hue / 6.0)
    hue = (hue + factor.view(-1, 1, 1)) % 1.0
    saturation = torch.where(top == 0, torch.zeros_like(span), span / torch.clamp(top, min=1e-12))
    return _hsv_to_rgb(hue, saturation, top)


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor):
    sector = hue * 6.0
    whole = torch.floor(sector)
    part = sector - whole
    whole = whole.long() % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * part)
    t = value * (1.0 - saturation * (1.0 - part))
    table = torch.stack(
        [
            torch.stack([value, q, p, p, t, value], dim=-3),
            torch.stack([t, value, value, q, p, p], dim=-3),
            torch.stack([p, p, t, value, value, q], dim=-3),
        ],
        dim=-4,
    )  # (B, 3, 6, H, W)
    index = whole.unsqueeze(-3).unsqueeze(-4).expand(-1, 3, 1, -1, -1)
    return table.gather(-3, index).squeeze(-3)


_CHANGES = (_brightness, _contrast, _saturation, _hue)


__all__ = ["BatchedAugment", "ColorJitter", "Drawn", "Flip", "ResizedCrop", "collate"]
