"""The live state of a training run, as lifecycle hooks see it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.model import TransferModel
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
    epoch: int = 0  # 1-based once training starts
    stage: int = 0  # index into plan
    history: list[dict[str, Any]] = attrs.field(factory=list)
