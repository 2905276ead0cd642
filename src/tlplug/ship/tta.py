"""Test-time augmentation: the softmax averaged over a few fixed views of each image.

The views are the image as validation sees it (the base transform: resize, center crop),
its horizontal mirror, and five crops (the four corners and the center) of the image
resized :data:`ZOOM` times larger (each shows 87% of the frame, the object 15% larger,
shifted by up to 6.5% of the frame either way). The mirror and the crops are what flip and
crop augmentations taught a model to be indifferent to. Vertical flips, rotations
and colour changes are left out: many classes are not indifferent to them. The first view
is exactly the image :func:`tlplug.train.step.evaluate` sees, and nothing is drawn at random,
so TTA is deterministic. :func:`infer` is the evaluation pass ``tlplug eval`` makes, with
or without the views.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from tlplug.compute.precision import Numerics
from tlplug.data.transforms import BaseTransform, base_transform
from tlplug.model.backbone import DataConfig

ZOOM = 1.15  # how much larger the image is for the five crops
VIEWS = ("image", "flip", "top-left", "top-right", "bottom-left", "bottom-right", "center")


@attrs.frozen
class ViewsTransform:
    """From an RGB PIL image to its :data:`VIEWS` as a ``(V, 3, size, size)`` uint8 tensor."""

    base: BaseTransform  # what validation does: the first view
    larger: BaseTransform  # the same at ``ZOOM`` times the size, for the crops

    def __call__(self, image: Image.Image) -> torch.Tensor:
        plain = self.base(image)
        return torch.stack([plain, plain.flip(-1), *five_crops(self.larger(image), self.base.size)])


def views_transform(config: DataConfig, img_size: int) -> ViewsTransform:
    """The :class:`ViewsTransform` of a backbone with data config ``config`` at ``img_size``."""
    return ViewsTransform(
        base_transform(config, img_size), base_transform(config, round(img_size * ZOOM))
    )


def five_crops(pixels: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The four corner crops and the center crop, ``size`` square, of ``(3, H, W)`` pixels."""
    height, width = pixels.shape[-2:]
    bottom, right = height - size, width - size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    return [pixels[:, y : y + size, x : x + size] for y, x in corners]


@torch.no_grad()
def view_probs(
    model: nn.Module, views: torch.Tensor, numerics: Numerics, device: torch.device
) -> torch.Tensor:
    """Softmax probabilities ``(B, V, C)`` of ``model`` (in eval mode) on each view of a
    ``(B, V, 3, S, S)`` batch, computed one view at a time as validation computes a batch."""
    out = []
    for index in range(views.shape[1]):
        batch = numerics.inputs(views[:, index].contiguous(), device)
        with numerics.autocast(device):
            out.append(model(batch).float().softmax(1))
    return torch.stack(out, 1)


@torch.no_grad()
def infer(
    model: nn.Module, loader: Iterable, device: torch.device, numerics: Numerics, tta: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Labels, predicted classes, probabilities and mean cross-entropy over ``loader``'s
    ``(uint8 images, labels)`` batches, computed as :func:`tlplug.train.step.evaluate`
    computes them; with ``tta`` the batches hold the views, whose softmax is averaged."""
    model.eval()
    labels, preds, probs, loss = [], [], [], 0.0
    for images, batch_labels in loader:
        target = batch_labels.to(device)
        if tta:
            prob = view_probs(model, images, numerics, device).mean(1)
            pred = prob.argmax(1)
            loss += F.nll_loss(prob.clamp_min(1e-12).log(), target, reduction="sum").item()
        else:
            with numerics.autocast(device):
                logits = model(numerics.inputs(images, device)).float()
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            pred, prob = logits.argmax(1), logits.softmax(1)
        labels.append(batch_labels)
        preds.append(pred.cpu())
        probs.append(prob.cpu())
    if not labels:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0, 0), 0.0
    labels_t = torch.cat(labels)
    return labels_t, torch.cat(preds), torch.cat(probs), loss / len(labels_t)
