"""The hook implementations: three regularizers, and what a run records about them."""

from __future__ import annotations

from typing import Any

from tlplug import hookimpl

from .bss import bss
from .common import Penalty
from .delta import delta
from .l2sp import l2_sp

CONFIG_KEY = "tlplug-regularize"  # config.json: every penalty's settings, defaults included
METRICS_KEY = "penalty"  # metrics.jsonl: each penalty's mean value over the epoch


@hookimpl
def tlplug_register_regularizers(register):
    """Register ``l2-sp``, ``bss`` and ``delta``."""
    register("l2-sp", l2_sp)
    register("bss", bss)
    register("delta", delta)


@hookimpl
def tlplug_run_start(run):
    """Record every penalty of this package with all its settings in config.json."""
    ours = _ours(run)
    if ours:
        from . import __version__

        run.config[CONFIG_KEY] = {
            "version": __version__,
            "penalties": [penalty.describe() for penalty in ours],
        }


@hookimpl
def tlplug_epoch_end(run, record):
    """Add each penalty's mean value over the epoch's training steps to the record."""
    means: dict[str, Any] = {}
    for penalty in _ours(run):
        key = penalty.name if penalty.name not in means else f"{penalty.name}#{len(means)}"
        means[key] = penalty.epoch_mean()
    if means:
        record[METRICS_KEY] = means


def _ours(run) -> list[Penalty]:
    return [penalty for penalty in run.penalties if isinstance(penalty, Penalty)]
