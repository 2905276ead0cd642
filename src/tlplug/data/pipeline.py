"""A run's image pipeline, built in one place for training, validation, the feature cache
and ``tlplug augment-preview``; and the one rule for the image size.

Every image goes through the backbone's base transform (decode, resize, center crop, uint8).
Training then applies the chosen augmentations: pixel-phase ones on the uint8 image,
tensor-phase ones on the normalized image, batch-phase ones on the whole batch on the
device. Validation applies none. A feature cache holds images through the deterministic
augmentations alone (those marked ``random=False``), which is also what ``--cache-features
on`` caches when random ones are chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tlplug.backbone import DataConfig
from tlplug.data.transforms import (
    BaseTransform,
    Normalize,
    OneOf,
    base_transform,
    build_transforms,
    normalize,
)
from tlplug.marks import PHASES, is_random, phase_of, runs_always


@attrs.frozen(eq=False)
class Pipeline:
    """What a run does to its images, by phase; ``names`` lists the augmentations of each
    phase in the order they run."""

    base: BaseTransform  # decode, resize, center crop: uint8 (3, S, S)
    normalize: Normalize  # the backbone's mean and std, applied on the device
    train: Callable | None  # the training augmentations on the base output; None: none
    steady: Callable | None  # only the deterministic ones: what a cached image gets
    batch: OneOf | None  # batch augmentations, on the device
    seeded: bool  # whether ``train`` draws at random, so every image needs a seed
    varying: tuple[str, ...]  # augmentations a feature cache cannot hold: random or batch
    names: dict[str, tuple[str, ...]]


def build_pipeline(augmentations: Sequence[Any], config: DataConfig, img_size: int) -> Pipeline:
    """The pipeline of ``augmentations`` (resolved choices, in the order they run) for a
    backbone with data config ``config`` at ``img_size``."""
    made: dict[str, list[tuple[Any, Callable]]] = {phase: [] for phase in PHASES}
    for choice in augmentations:
        transform = choice.strategy.factory(img_size, **choice.options)
        made[phase_of(choice.strategy)].append((choice.strategy, transform))

    def composed(keep: Callable[[Any], bool]) -> Callable | None:
        pixels = [t for s, t in made["pixels"] if keep(s)]
        tensors = [t for s, t in made["tensor"] if keep(s)]
        return build_transforms(config, img_size, pixels, tensors)[1]

    batch = made["batch"]
    images = made["pixels"] + made["tensor"]
    return Pipeline(
        base=base_transform(config, img_size),
        normalize=normalize(config),
        train=composed(lambda s: True),
        steady=composed(lambda s: not is_random(s)),
        batch=OneOf(
            [t for s, t in batch if not runs_always(s)], [t for s, t in batch if runs_always(s)]
        )
        if batch
        else None,
        seeded=any(is_random(s) for s, _ in images),
        varying=tuple(s.name for s, _ in images if is_random(s)) + tuple(s.name for s, _ in batch),
        names={phase: tuple(s.name for s, _ in made[phase]) for phase in PHASES},
    )


def image_size(asked: int | None, source_size: int | None, config: DataConfig) -> int:
    """The size a run trains at: the one asked for, else the one the data source is made
    for, else the backbone's own."""
    return asked or source_size or config.input_size
