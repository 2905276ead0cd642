"""Freeze schedules as data: a plan is a list of stages, each naming the groups that train.

A schedule plugin turns (group names, epochs) into a plan once; the engine then looks up the
stage of each epoch. Because the plan is plain data it is printed before training, written
to config.json, and is all a resumed run needs to know where it stands.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from tlplug.errors import TlplugError


@attrs.frozen
class Stage:
    """From epoch ``start`` (0-based) on, exactly the groups in ``trainable`` train.

    Of the groups in ``biases`` only the bias parameters train (BitFit); every other group
    is frozen. ``lr_scale`` multiplies every group's learning rate while the stage lasts
    (LP-FT fine-tunes at a lower rate than it probes). The groups the stage newly trains
    warm up: their learning rate ramps linearly from near 0 over its first ``warmup``
    epochs (fractions allowed), so a fitted head does not meet large steps at once.
    """

    start: int
    trainable: tuple[str, ...] = attrs.field(converter=tuple)
    name: str = ""
    biases: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    lr_scale: float = 1.0
    warmup: float = 0.0

    def to_json(self) -> dict:
        """Return the stage as a JSON-ready dict."""
        return {
            "start": self.start,
            "name": self.name,
            "trainable": list(self.trainable),
            "biases": list(self.biases),
            "lr_scale": self.lr_scale,
            "warmup": self.warmup,
        }

    @classmethod
    def from_json(cls, data: dict) -> Stage:
        """Rebuild a stage from :meth:`to_json` output."""
        return cls(
            data["start"],
            data["trainable"],
            data.get("name", ""),
            data.get("biases", ()),
            data.get("lr_scale", 1.0),
            data.get("warmup", 0.0),
        )

    @property
    def training(self) -> tuple[str, ...]:
        """Every group with at least one trainable parameter in this stage."""
        return (*self.biases, *self.trainable)


def top_groups(groups: Sequence[str], count: int) -> tuple[str, ...]:
    """The last ``count`` groups (the head and the ``count - 1`` groups below it)."""
    return tuple(groups[max(0, len(groups) - count) :])


def stage_name(groups: Sequence[str], trainable: Sequence[str], biases: Sequence[str] = ()) -> str:
    """A short name: ``head``, ``full``, ``layer3..head`` for a top-down slice, ``biases+head``."""
    if biases:
        return f"biases+{stage_name(groups, trainable)}" if trainable else "biases"
    if len(trainable) == len(groups):
        return "full"
    if list(trainable) == list(groups[-1:]):
        return groups[-1]
    return f"{trainable[0]}..{trainable[-1]}"


def check_plan(plan: Sequence[Stage], groups: Sequence[str], what: str) -> list[Stage]:
    """Validate a plan from a schedule plugin and name its unnamed stages."""
    if not plan:
        raise TlplugError(f"{what} produced no stages")
    checked = []
    for index, stage in enumerate(plan):
        if not isinstance(stage, Stage):
            raise TlplugError(
                f"{what} must return tlplug.Stage objects, got {type(stage).__name__}"
            )
        if not stage.training:
            raise TlplugError(f"{what}: stage {index + 1} trains no group")
        if set(stage.trainable) & set(stage.biases):
            raise TlplugError(f"{what}: stage {index + 1} lists a group as trainable and biases")
        if not stage.lr_scale > 0:
            raise TlplugError(f"{what}: stage {index + 1} has lr_scale {stage.lr_scale}; use > 0")
        if not stage.warmup >= 0:
            raise TlplugError(f"{what}: stage {index + 1} has warmup {stage.warmup}; use >= 0")
        unknown = [g for g in stage.training if g not in groups]
        if unknown:
            raise TlplugError(
                f"{what} names unknown group(s) {', '.join(unknown)}; "
                f"groups are {', '.join(groups)}"
            )
        if index == 0 and stage.start != 0:
            raise TlplugError(f"{what}: the first stage must start at epoch 0")
        if index and stage.start <= plan[index - 1].start:
            raise TlplugError(f"{what}: stage starts must increase")
        ordered = tuple(g for g in groups if g in stage.trainable)
        biases = tuple(g for g in groups if g in stage.biases)
        name = stage.name or stage_name(groups, ordered, biases)
        checked.append(
            Stage(stage.start, ordered, name, biases, float(stage.lr_scale), float(stage.warmup))
        )
    return checked


def stage_at(plan: Sequence[Stage], epoch: int) -> int:
    """Index of the stage in force at ``epoch`` (0-based)."""
    index = 0
    for i, stage in enumerate(plan):
        if stage.start <= epoch:
            index = i
    return index
