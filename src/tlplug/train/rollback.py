"""The guard on a stage's first epoch: an exploding loss is rolled back and tried again.

A stage whose first epoch ends with a loss that is not finite, or at many times the loss of
the stage before (and above a uniform guess's; under distillation, the labels' part of both),
is put back to where it started (weights, optimizer, LR schedule, weight average, random
state) and trained again with every learning rate cut to :data:`RETRY_LR` times what it
was, for the rest of the run. That happens once a stage; an epoch that explodes again goes
on (or, not finite, stops the run as before).
"""

from __future__ import annotations

import math
from typing import Any

from tlplug.run import Run
from tlplug.train.snapshot import Snapshot

EXPLODED = 4.0  # a first epoch's loss this many times the stage before's has exploded
RETRY_LR = 0.1  # the factor on every learning rate after a rollback


def compared_loss(loss: float, labels_loss: float | None) -> float:
    """The loss of an epoch the guard compares: the labels' cross-entropy when a teacher's
    part makes the whole loss differ (on another scale than a stage without it)."""
    return loss if labels_loss is None else labels_loss


class StageGuard:
    """Watches the first epoch of each stage of one sitting."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.before: float | None = None  # the stage before's last training loss

    def arm(self, run: Run) -> None:
        """Take the state a stage starts from (call as it starts)."""
        self.snapshot = Snapshot.take(run)
        last = run.history[-1] if run.history else None
        self.before = None
        if last and last["stage"] != run.stage:
            self.before = compared_loss(last["train_loss"], last.get("train_labels_loss"))

    def disarm(self) -> None:
        """The stage's first epoch passed: nothing to roll back to any more."""
        self.snapshot = None

    def exploded(self, loss: float | None, classes: int) -> str | None:
        """Why a first epoch with training loss ``loss`` (None: not finite) exploded, or
        None when it did not (or the guard is not armed). Under distillation both sides are
        the labels' cross-entropy (``train_labels_loss``): a teacher's part of the loss is
        on another scale than a stage fit by the probe on the labels alone."""
        if self.snapshot is None:
            return None
        if loss is None or not math.isfinite(loss):
            return "the loss was not finite"
        if self.before is None or loss <= max(EXPLODED * self.before, math.log(classes)):
            return None
        return (
            f"the loss went to {loss:.3g}, {loss / max(self.before, 1e-12):.0f}x the stage "
            f"before's {self.before:.3g}"
        )

    def roll_back(self, run: Run, why: str) -> dict[str, Any]:
        """Put the run back to the stage's start, cut every learning rate, say so; return
        the record of it for the retried epoch's line of metrics.jsonl."""
        self.snapshot.restore(run)
        self.snapshot = None  # once a stage
        run.lr_scheduler.back_off(RETRY_LR)
        stage = run.plan[run.stage]
        run.console.say(
            f"stage {run.stage + 1} ({stage.name}): {why} in its first epoch; rolled back to "
            f"the stage's start, training again at {RETRY_LR:g}x the learning rate"
        )
        return {"why": why, "lr_factor": RETRY_LR}
