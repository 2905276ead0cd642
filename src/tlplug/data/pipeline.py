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

A random resized crop (an augmentation marked ``whole``) takes its window from the whole
image: the training images then start from :class:`~tlplug.data.transforms.WholeImage`
rather than the center square. When every image augmentation has a batched form (its
``batched`` mark) the run may run them batched (:mod:`tlplug.data.batched`): the loader
draws each image's parameters and the device does the pixel work for the whole batch;
:func:`choose_batched` decides, and says why.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tlplug.data.batched import BatchedAugment
from tlplug.data.transforms import (
    BaseTransform,
    Normalize,
    OneOf,
    WholeImage,
    base_transform,
    build_transforms,
    normalize,
    whole_image,
)
from tlplug.errors import OptionError
from tlplug.model.backbone import DataConfig
from tlplug.plugins.marks import (
    PHASES,
    batched_form,
    is_random,
    phase_of,
    runs_always,
    takes_whole,
)


@attrs.frozen(eq=False)
class Pipeline:
    """What a run does to its images, by phase; ``names`` lists the augmentations of each
    phase in the order they run."""

    base: BaseTransform  # decode, resize, center crop: uint8 (3, S, S)
    normalize: Normalize  # the backbone's mean and std, applied on the device
    train: Callable | None  # the training augmentations on train_base's output; None: none
    steady: Callable | None  # only the deterministic ones: what a cached image gets
    batch: OneOf | None  # batch augmentations, on the device
    seeded: bool  # whether ``train`` draws at random, so every image needs a seed
    varying: tuple[str, ...]  # augmentations a feature cache cannot hold: random or batch
    names: dict[str, tuple[str, ...]]
    # (probability, deterministic training pipeline) for each combination of the random
    # image augmentations' outcomes; None when one of them does not list its outcomes
    outcomes: tuple[tuple[float, Callable | None], ...] | None = None
    # what the training images start from: base, or the whole image for a whole-image crop
    train_base: BaseTransform | WholeImage | None = None
    batched: BatchedAugment | None = None  # ``train`` when the augmentations run batched

    @property
    def training_base(self) -> BaseTransform | WholeImage:
        """What the training images start from."""
        return self.train_base or self.base

    def describe(self, why: str) -> dict[str, Any]:
        """Where the image augmentations run, JSON-ready for config.json (``why``: the
        reason :func:`choose_batched` gave)."""
        images = self.names["pixels"] + self.names["tensor"]
        batched = self.batched.names if self.batched is not None else ()
        return {
            "path": "batched" if self.batched is not None else "per-image",
            "why": why,
            "batched": list(batched),
            "per_image": [n for n in images if n not in batched],
            "whole_image": isinstance(self.training_base, WholeImage),
        }


def choose_batched(augmentations: Sequence[Any], asked: str, device_type: str) -> tuple[bool, str]:
    """Whether ``augmentations`` (resolved choices) run batched, and why, for
    ``--augment-path`` ``asked`` on a device of ``device_type``. ``auto`` batches them on a
    GPU when each image augmentation has a batched form; on a CPU the per-image path in
    the loader is kept (it is faster there at the usual sizes: ``bench/augment.py``)."""
    images = [c.strategy for c in augmentations if phase_of(c.strategy) != "batch"]
    missing = [s.name for s in images if batched_form(s) is None]
    if asked == "per-image":
        return False, "asked"
    if missing:
        if asked == "batched":
            raise OptionError(
                f"--augment-path batched: {', '.join(missing)} has no batched form; drop it "
                "or use --augment-path auto"
            )
        return False, f"no batched form: {', '.join(missing)}"
    if asked == "batched":
        return True, "asked"
    if not any(is_random(s) for s in images):
        return False, "no random image augmentation"
    if device_type == "cuda":
        return True, "GPU"
    return False, "CPU (per-image is faster there)"


def build_pipeline(
    augmentations: Sequence[Any], config: DataConfig, img_size: int, batched: bool = False
) -> Pipeline:
    """The pipeline of ``augmentations`` (resolved choices, in the order they run) for a
    backbone with data config ``config`` at ``img_size``; with ``batched``, its image
    augmentations run batched (each must have a batched form: see
    :func:`choose_batched`)."""
    made: dict[str, list[tuple[Any, Callable]]] = {phase: [] for phase in PHASES}
    drawn = []  # (choice, transform) of the random image augmentations
    for choice in augmentations:
        transform = choice.strategy.factory(img_size, **choice.options)
        phase = phase_of(choice.strategy)
        made[phase].append((choice.strategy, transform))
        if phase != "batch" and is_random(choice.strategy):
            drawn.append((choice, transform))
    whole = any(takes_whole(s) for s, _ in made["pixels"])

    def composed(keep: Callable[[Any], bool], swap: dict | None = None) -> Callable | None:
        swap = swap or {}
        pixels = [swap.get(id(t), t) for s, t in made["pixels"] if keep(s)]
        tensors = [swap.get(id(t), t) for s, t in made["tensor"] if keep(s)]
        pixels = [t for t in pixels if t is not None]
        tensors = [t for t in tensors if t is not None]
        return build_transforms(config, img_size, pixels, tensors)[1]

    batch = made["batch"]
    images = made["pixels"] + made["tensor"]
    device = _batched(made["pixels"], made["tensor"], img_size, config, whole) if batched else None
    return Pipeline(
        base=base_transform(config, img_size),
        normalize=normalize(config),
        train=device or composed(lambda s: True),
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
        train_base=whole_image(config, img_size) if whole else None,
        batched=device,
    )


def _batched(
    pixels: list, tensors: list, img_size: int, config: DataConfig, whole: bool
) -> BatchedAugment:
    """The batched form of the ``pixels`` augmentations ((strategy, transform) pairs)."""
    lacking = [s.name for s, _ in tensors] + [s.name for s, _ in pixels if not batched_form(s)]
    if lacking:
        raise OptionError(f"{', '.join(lacking)} has no batched form; use --augment-path auto")
    crop, ops = None, []
    for strategy, transform in pixels:
        made = batched_form(strategy)(transform)
        if takes_whole(strategy):
            crop = made
        else:
            ops.append(made)
    slot = whole_image(config, img_size).slot[1:] if whole else None
    return BatchedAugment(img_size, crop, tuple(ops), slot)


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
