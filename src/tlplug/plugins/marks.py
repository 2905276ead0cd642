"""How an augmentation takes part in training: the marks its factory carries.

:func:`augmentation` sets them; the engine reads them to order the training pipeline, to
seed only what draws at random, and to decide whether a head-only stage may train on
features cached once. Nothing here imports torch, so a plugin that marks its factories
stays light to import.
"""

from __future__ import annotations

from typing import Any

from tlplug.errors import TlplugError

PHASES = ("pixels", "tensor", "batch")


def augmentation(
    *,
    phase: str = "pixels",
    order: float = 50,
    random: bool = True,
    always: bool = False,
    outcomes: Any = None,
    batched: Any = None,
    whole: bool = False,
):
    """Mark an augmentation factory with where it acts and how.

    ``phase``: ``"pixels"`` (uint8 image), ``"tensor"`` (normalized float image) or
    ``"batch"`` (``(images, targets)`` on the device); ``order``: lower runs first within
    the phase (built-ins: crops 10, flips 20, colour operations 30). ``random``: False for
    a deterministic transform, which is applied to cached features too and does not turn
    the feature cache off. ``always``: for a batch augmentation, run on every batch, after
    the one that mixup, cutmix and the other batch augmentations take turns at.
    ``outcomes``: for a random image augmentation with a few possible results (a flip: the
    image as it is or mirrored), a function taking the factory's arguments and returning
    ``[(probability, transform), ...]``, each transform deterministic (None: the image
    unchanged); a converged linear probe then caches every outcome once instead of drawing
    views. ``batched``: for a pixels-phase augmentation, a function taking the transform
    the factory made and returning its batched form (see :mod:`tlplug.data.batched`: it
    draws each image's parameters in the loader and does the pixel work on the whole batch
    on the device); a run batches its augmentations when every image augmentation has one.
    ``whole``: the augmentation takes the whole image (its short side resized, its aspect
    kept: :class:`~tlplug.data.transforms.WholeImage`) rather than the center-cropped
    square, and gives the ``(3, S, S)`` square itself (a random resized crop).
    """

    def mark(factory):
        factory.phase, factory.order = phase, order
        factory.random, factory.always = random, always
        factory.outcomes, factory.batched, factory.whole = outcomes, batched, whole
        return factory

    return mark


def phase_of(strategy: Any) -> str:
    """Where the augmentation ``strategy`` (a registered strategy) acts."""
    phase = getattr(strategy.factory, "phase", "pixels")
    if phase not in PHASES:
        raise TlplugError(
            f"augmentation '{strategy.name}' has phase {phase!r}; "
            f"plugin '{strategy.plugin}' must use one of {', '.join(PHASES)}"
        )
    return phase


def rank(strategy: Any) -> tuple[int, float]:
    """Sort key of an augmentation: its phase, then its ``order`` (default 50)."""
    return PHASES.index(phase_of(strategy)), float(getattr(strategy.factory, "order", 50))


def is_random(strategy: Any) -> bool:
    """Whether the augmentation draws at random (unmarked ones are taken to)."""
    return bool(getattr(strategy.factory, "random", True))


def batched_form(strategy: Any) -> Any:
    """The function that makes the batched form of the augmentation ``strategy``, or None."""
    return getattr(strategy.factory, "batched", None)


def takes_whole(strategy: Any) -> bool:
    """Whether the augmentation ``strategy`` takes the whole image, not the center square."""
    return bool(getattr(strategy.factory, "whole", False))


def runs_always(strategy: Any) -> bool:
    """Whether a batch augmentation runs on every batch rather than taking turns."""
    return bool(getattr(strategy.factory, "always", False))
