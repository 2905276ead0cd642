"""What both loggers take from a run: the recipe as flat parameters, an epoch's numbers."""

from __future__ import annotations

import json
from typing import Any

#: config.json key under which this package records where its loggers wrote.
CONFIG_KEY = "tlplug-loggers"

Scalar = str | int | float | bool


def flat_recipe(recipe: dict[str, Any]) -> dict[str, Scalar]:
    """The recipe of config.json as one level of ``name: value``: nested options joined with
    dots (``augment_opts.flip.p``), lists as JSON text, None as ``"None"``."""
    flat: dict[str, Scalar] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        elif isinstance(value, (dict, list, tuple)):
            flat[prefix] = json.dumps(value)
        elif value is None:
            flat[prefix] = "None"
        elif isinstance(value, (str, int, float, bool)):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    for key, value in recipe.items():
        add(key, value)
    return flat


def epoch_numbers(record: dict[str, Any]) -> list[tuple[str, str | None, float]]:
    """The numbers of an epoch's record (a line of metrics.jsonl) as ``(key, sub, value)``:
    ``("val_acc", None, 0.9)``, ``("lr", "head", 0.001)`` for a dict of numbers (each
    group's LR, a plugin's own). Flags, text, lists and missing values are left out, and so
    are ``epoch``, which the loggers use as a step, and ``stage_lr``, the LRs a stage
    starts with, which ``lr`` has at every epoch."""
    found = []
    for key, value in record.items():
        if key in ("epoch", "stage_lr"):
            continue
        if _number(value):
            found.append((key, None, float(value)))
        elif isinstance(value, dict):
            found.extend((key, str(sub), float(v)) for sub, v in value.items() if _number(v))
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
