"""A run's image pipeline, built in one place for training, validation, the feature cache
and ``tlplug augment-preview``; and the one rule for the image size.

Every image goes through the backbone's base transform (decode, resize, center crop, uint8).
Training then applies the chosen augmentations: pixel-phase ones on the uint8 image,
tensor-phase ones on the normalized image, batch-phase ones on the whole batch on the
device. Validation applies none. A feature cache holds images through the deterministic
augmentations alone (those marked ``random=False``), which is also what ``--cache-features
on`` caches when random ones are chosen. When every random image augmentation lists its
few possible results (its ``outcomes`` mark), :attr:`Pipeline.outcomes` holds the
deterministic pipeline of each combination of them, which a converged probe caches instead
of drawn views.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tlplug.data.transforms import (
    BaseTransform,
    Normalize,
    OneOf,
    base_transform,
    build_transforms,
    normalize,
)
from tlplug.model.backbone import DataConfig
from tlplug.plugins.marks import PHASES, is_random, phase_of, runs_always


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
    # (probability, deterministic training pipeline) for each combination of the random
    # image augmentations' outcomes; None when one of them does not list its outcomes
    outcomes: tuple[tuple[float, Callable | None], ...] | None = None


def build_pipeline(augmentations: Sequence[Any], config: DataConfig, img_size: int) -> Pipeline:
    """The pipeline of ``augmentations`` (resolved choices, in the order they run) for a
    backbone with data config ``config`` at ``img_size``."""
    made: dict[str, list[tuple[Any, Callable]]] = {phase: [] for phase in PHASES}
    drawn = []  # (choice, transform) of the random image augmentations
    for choice in augmentations:
        transform = choice.strategy.factory(img_size, **choice.options)
        phase = phase_of(choice.strategy)
        made[phase].append((choice.strategy, transform))
        if phase != "batch" and is_random(choice.strategy):
            drawn.append((choice, transform))

    def composed(keep: Callable[[Any], bool], swap: dict | None = None) -> Callable | None:
        swap = swap or {}
        pixels = [swap.get(id(t), t) for s, t in made["pixels"] if keep(s)]
        tensors = [swap.get(id(t), t) for s, t in made["tensor"] if keep(s)]
        pixels = [t for t in pixels if t is not None]
        tensors = [t for t in tensors if t is not None]
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
        outcomes=_outcomes(drawn, img_size, composed),
    )


def _outcomes(choices: Sequence[Any], img_size: int, composed: Callable):
    """Every combination of the random image augmentations' outcomes as (probability,
    pipeline), those of probability 0 left out; None if one of them lists none."""
    listed = []
    for choice, transform in choices:
        outcomes = getattr(choice.strategy.factory, "outcomes", None)
        if outcomes is None:
            return None
        made = outcomes(img_size, **choice.options)
        listed.append([(id(transform), p, t) for p, t in made])
    pipelines = []
    for combination in itertools.product(*listed):
        probability = math.prod(p for _, p, _ in combination)
        if probability > 0:
            swap = {key: t for key, _, t in combination}
            pipelines.append((probability, composed(lambda s: True, swap)))
    return tuple(pipelines)


def image_size(asked: int | None, source_size: int | None, config: DataConfig) -> int:
    """The size a run trains at: the one asked for, else the one the data source is made
    for, else the backbone's own."""
    return asked or source_size or config.input_size
