"""What this plugin's tests share besides fixtures (those are in conftest.py); test
modules import these from here."""

from __future__ import annotations

import json
from pathlib import Path

from tlplug import hookimpl
from tlplug.testing import FAST_RECIPE

# Two training steps per epoch (18 images in batches of 8, the part-batch dropped), no
# augmentation, no plots.
TINY = {**FAST_RECIPE, "epochs": 2, "augment": (), "plots": False}


STEPS_PER_EPOCH = 2


class FailAt:
    """Raises in ``tlplug_epoch_end`` of one epoch, as a plugin with a bug would; it runs
    before the loggers, so they never see that epoch's end."""

    name = "fail-at"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        if run.epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")


class FailingLogger:
    """A plugin with the logger ``fail``, which raises at the end of one epoch (none when
    ``epoch`` is None): after the loggers before it in ``--logger`` logged that epoch, as a
    run killed between an epoch's end and its checkpoint would have."""

    name = "failing-logger"

    def __init__(self, epoch: int | None):
        self.epoch = epoch

    @hookimpl
    def tlplug_register_loggers(self, register):
        register("fail", self.logger)

    def logger(self):
        """Raises at the end of one epoch."""
        return self

    def epoch_end(self, run, record):
        if run.epoch == self.epoch:
            raise RuntimeError(f"planned failure at epoch {self.epoch}")


def read_config(run_dir: Path) -> dict:
    """The run's config.json."""
    return json.loads((run_dir / "config.json").read_text())
