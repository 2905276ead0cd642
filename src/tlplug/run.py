"""The live state of a training run, as lifecycle hooks see it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.adapters import Adapter
from tlplug.data.sources import Skipped
from tlplug.errors import TlplugError
from tlplug.loss import TrainingLoss
from tlplug.model import TransferModel
from tlplug.precision import FP32, Compiled, Numerics
from tlplug.recipe import Recipe
from tlplug.schedule import Stage


@attrs.define
class Run:
    """Everything a run is made of while it trains; passed to every lifecycle hook."""

    recipe: Recipe
    config: dict[str, Any]
    model: TransferModel
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    plan: list[Stage]
    classes: tuple[str, ...]
    run_dir: Path
    device: torch.device
    numerics: Numerics = FP32
    epoch: int = 0  # 1-based once training starts; epochs completed between epochs
    stage: int = -1  # index into plan; -1 before the first stage starts
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = attrs.field(factory=list)
    adapter: Adapter | None = None
    loss: TrainingLoss | None = None  # cross-entropy and the regularizers' penalties
    batch_augment: Callable | None = None  # mixup, cutmix: (images, targets) on the device
    skipped: tuple[Skipped, ...] = ()  # data files left out, with their reasons
    compiled: Compiled | None = None  # --compile: the model as training steps call it

    def schedule_state(self) -> dict[str, Any]:
        """Everything the freeze and LR schedules need to continue, JSON-ready.

        Taken between epochs, it holds the plan, the stage in force, the epochs and steps
        done and the LR scheduler's state (the optimizer's own state is separate).
        """
        return {
            "plan": [stage.to_json() for stage in self.plan],
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.step,
            "lr_scheduler": self.lr_scheduler.state_dict(),
        }

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`schedule_state` output taken in a run with the same plan."""
        plan = [Stage.from_json(s) for s in state["plan"]]
        if plan != self.plan:
            raise TlplugError("the saved schedule state is for a different freeze plan")
        self.stage, self.epoch, self.step = state["stage"], state["epoch"], state["step"]
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
