"""What training sees: augmented training images in one PNG grid (``tlplug augment-preview``).

The images are the first ones of a run's first epoch, in the order and with the per-image
seeds the run's sampler gives them, through the same base transform, pixel-phase
augmentations, normalization and tensor-phase augmentations; so a run with the same recipe
and seed trains on exactly these pixels first. Batch-phase augmentations (mixup, cutmix)
then act on the whole grid as one batch. For display, normalization is undone and values
are clipped to [0, 1].
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs
import torch
from torch.nn import functional

from tlplug.compute.seeding import epoch_seed, seed_everything
from tlplug.data.loaders import EpochSampler, TransformedImages, balanced_weights
from tlplug.data.pipeline import build_pipeline, image_size
from tlplug.engine import Engine
from tlplug.errors import OptionError, TlplugError
from tlplug.model.backbone import DataConfig
from tlplug.plotting import labelled_grid, save_image
from tlplug.plugins.resolve import build_backbone, load_data

SHARED = {  # what a batch-level mix shares across the batch it mixes
    "mixup": "one mixing ratio for the whole batch",
    "cutmix": "one box and ratio for the whole batch",
}


@attrs.frozen(eq=False)
class Preview:
    """What :func:`write_preview` wrote, and the images in it."""

    path: Path
    images: torch.Tensor  # (count, 3, S, S) as shown: un-normalized, in [0, 1]
    targets: torch.Tensor  # (count, num_classes) class probabilities, mixed or one-hot
    classes: tuple[str, ...]
    img_size: int
    columns: int
    augmentations: dict[str, tuple[str, ...]]  # phase -> names, in the order they run
    size: tuple[int, int]  # (width, height) of the PNG
    mixed: str | None = None  # the batch augmentation applied to the grid, if any

    def labels(self, top: int = 2) -> list[str]:
        """Each tile's classes: ``name`` when one-hot, else ``name 0.70+other 0.30``."""
        found = []
        for row in self.targets:
            probs, indices = row.topk(min(top, len(row)))
            if probs[0] >= 1 - 1e-6:
                found.append(self.classes[int(indices[0])])
                continue
            found.append(
                "+".join(
                    f"{self.classes[int(i)]} {float(p):.2f}"
                    for p, i in zip(probs, indices, strict=True)
                    if p > 0
                )
            )
        return found

    def summary(self) -> str:
        """One line: where the grid is, its size, the images and augmentations in it."""
        runs = [
            f"{phase} {', '.join(names)}" for phase, names in self.augmentations.items() if names
        ]
        width, height = self.size
        mixed = ""
        if self.mixed:
            shared = SHARED.get(self.mixed, "one draw for the whole batch")
            mixed = f"; the grid is one batch: {self.mixed} applied with {shared}, as in training"
        return (
            f"wrote {self.path} ({width}x{height}): {len(self.images)} training "
            f"image{'s' if len(self.images) != 1 else ''} at "
            f"{self.img_size}px, {self.columns} per row, labelled; augmentations: "
            + ("; ".join(runs) if runs else "none")
            + mixed
        )


def write_preview(
    engine: Engine,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    count: int = 16,
    overwrite: bool = False,
) -> Preview:
    """Write a PNG grid of ``count`` training images of ``data`` as ``engine``'s recipe
    augments them (None for the synthetic set); refuse an existing ``out`` unless
    ``overwrite``.

    ``engine`` is a :class:`tlplug.Engine`; its recipe gives the backbone (built without
    pretrained weights, for its preprocessing), image size, seed and augmentations.
    """
    out = Path(out)
    _check_out(out, overwrite)
    if count < 1:
        raise OptionError(f"--count must be at least 1, got {count}")
    recipe = engine.recipe
    recipe.check()
    seed_everything(recipe.seed)
    splits = load_data(engine.plugins, data, recipe)
    backbone, _ = build_backbone(
        engine.parts["backbones"], attrs.evolve(recipe, pretrained=False, weights=None)
    )
    config = backbone.data_config
    img_size = image_size(recipe.img_size, splits.img_size, config)
    del backbone

    pipeline = build_pipeline(engine.parts["augmentations"], config, img_size)
    dataset = TransformedImages(splits.train, pipeline.training_base, pipeline.train)
    weights = balanced_weights(splits.train.labels) if recipe.balance == "sampler" else None
    samples = [dataset[key] for key in first_keys(len(dataset), count, recipe.seed, weights)]
    images = pipeline.normalize(torch.stack([image for image, _ in samples]))  # as on the device
    labels = torch.tensor([label for _, label in samples])
    targets = functional.one_hot(labels, len(splits.classes)).float()
    mixed = None
    if pipeline.batch is not None:
        seed_everything(epoch_seed(recipe.seed, 1))
        images, targets = pipeline.batch(images, targets)
        if pipeline.batch.last is not None:
            mixed = [n for n in pipeline.names["batch"]][pipeline.batch.last]

    shown = unnormalize(images, config)
    columns = math.ceil(math.sqrt(count))
    preview = Preview(
        path=out,
        images=shown,
        targets=targets,
        classes=tuple(splits.classes),
        img_size=img_size,
        columns=columns,
        augmentations=pipeline.names,
        size=(0, 0),
        mixed=mixed,
    )
    picture = labelled_grid(shown, preview.labels(), columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(picture, out)
    return attrs.evolve(preview, size=picture.size)


def first_keys(
    size: int, count: int, seed: int, weights: torch.Tensor | None = None
) -> list[tuple[int, int]]:
    """The first ``count`` ``(index, item seed)`` pairs a training run seeded with ``seed``
    draws, from epoch 1 on (an image may come again when ``count`` exceeds ``size``)."""
    sampler = EpochSampler(size, seed, shuffle=True, weights=weights)
    keys: list[tuple[int, int]] = []
    epoch = 1
    while len(keys) < count:
        sampler.set_epoch(epoch)
        keys.extend(sampler)
        epoch += 1
    return keys[:count]


def unnormalize(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """Undo the backbone's normalization of a ``(B, 3, S, S)`` batch; clip to [0, 1]."""
    mean = torch.tensor(config.mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(config.std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ".png":
        raise OptionError(f"--out {out} must name a .png file")
    if out.is_dir():
        raise TlplugError(f"--out {out} is a folder; name a .png file")
    if out.exists() and not overwrite:
        raise TlplugError(f"{out} already exists; pass --overwrite to replace it")
