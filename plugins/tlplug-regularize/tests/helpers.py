"""What this plugin's tests share besides fixtures (those are in conftest.py); test
modules import these from here."""

from __future__ import annotations

import json
from pathlib import Path

from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, build_model, resolve
from tlplug.recipe import Recipe
from tlplug.testing import FAST_RECIPE

TINY = {**FAST_RECIPE, "epochs": 2, "augment": ()}


def make_model(backbone: str = "timm:resnet10t", classes: int = 3, seed: int = 0):
    """A real :class:`tlplug.model.transfer.TransferModel` built as the engine builds it."""
    import torch

    torch.manual_seed(seed)
    recipe = Recipe.from_kwargs(backbone=backbone, pretrained=False, img_size=32)
    parts = resolve(PluginHost(), recipe)
    backbone_, _ = build_backbone(parts.provider, recipe)
    return build_model(parts.head, backbone_, classes)


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """config.json and the metrics.jsonl records of a run directory."""
    config = json.loads((run_dir / "config.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return config, [json.loads(line) for line in lines if line.strip()]
