"""The ``lora`` freeze schedule: every group trains from the first epoch, under an adapter.

The schedule names the ``lora`` adapter, which tlplug attaches when ``--adapter`` is not
given; the adapter pins every original backbone weight, so "every group trains" means the
LoRA factors and the head train.
"""

from __future__ import annotations

from tlplug import Stage

STAGE_NAME = "lora"


def lora_schedule(groups: list[str], epochs: int) -> list[Stage]:
    """Train the adapter parameters of every group and the head from epoch 0 (with --adapter)."""
    return [Stage(0, groups, STAGE_NAME)]


# The adapter this schedule needs: tlplug attaches it when --adapter is not given.
lora_schedule.adapter = "lora"
