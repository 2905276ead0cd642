"""``tlplug rank``: which backbone to fine-tune, from one forward pass per image each.

Each candidate backbone (``timm:resnet50``, or ``timm:resnet50@weights.safetensors`` with
weights of its own) runs once over the training and validation images, as the recipe
preprocesses them without augmentation, in the recipe's precision. On its features:

- LogME (:mod:`tlplug.search.logme`), a transferability score that needs no training;
- the converged linear probe tlplug fits in a head stage, with its accuracy on a held-out
  fifth of the training images and on the validation images;
- its parameters and the images per second of its forward pass.

The table is sorted by LogME and written, with rank.json and a plot of score against
speed, to the rank's directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tlplug.compute.device import pick_device
from tlplug.compute.precision import numerics_for
from tlplug.compute.seeding import seed_everything
from tlplug.console import Console
from tlplug.data.loaders import make_loaders
from tlplug.data.pipeline import build_pipeline, image_size
from tlplug.errors import OptionError
from tlplug.model.transfer import count_params
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, build_model, load_data, resolve
from tlplug.recipe import Recipe
from tlplug.rundir import layout as rundir
from tlplug.search.logme import logme
from tlplug.train.feature_cache import extract
from tlplug.train.probe import fit_probe

RANK_JSON, RANK_PLOT = "rank.json", "rank.png"


@attrs.frozen
class Candidate:
    """A backbone to rank and, when given, the weights file it starts from."""

    backbone: str
    weights: str | None = None

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """``NAME`` or ``NAME@WEIGHTS``."""
        name, sep, weights = text.partition("@")
        if sep and not weights:
            raise OptionError(f"--backbone {text}: give the weights file after '@'")
        return cls(name, weights or None)

    @property
    def label(self) -> str:
        """How the table names it: as it was given."""
        return f"{self.backbone}@{self.weights}" if self.weights else self.backbone


def rank_backbones(
    host: PluginHost,
    data: str | os.PathLike | None,
    candidates: list[Candidate],
    recipe: Recipe,
    out: Path,
    console: Console,
) -> list[dict[str, Any]]:
    """Score every candidate on ``data`` (see the module's docstring); write rank.json and
    rank.png to ``out`` and return the rows, best LogME first."""
    if not candidates:
        raise OptionError("give at least one --backbone to rank")
    rundir.check_run_dir(out, False)
    seed_everything(recipe.seed)
    splits = load_data(host, data, recipe)
    device = pick_device(recipe.device)
    rows = []
    for candidate in candidates:
        chosen = attrs.evolve(
            recipe,
            backbone=candidate.backbone,
            weights=candidate.weights or recipe.weights,
            augment=(),
        )
        console.say(f"rank: {candidate.label}")
        rows.append(_score(host, chosen, candidate, splits, device, out))
    rows.sort(key=lambda row: row["logme"], reverse=True)
    rundir.write_json(out / RANK_JSON, {"data": splits.info, "backbones": rows})
    from tlplug.plotting import draw_rank, save_png

    save_png(draw_rank(rows), out / RANK_PLOT)
    return rows


def _score(
    host: PluginHost, recipe: Recipe, candidate: Candidate, splits, device, out: Path
) -> dict[str, Any]:
    parts = resolve(host, recipe)
    backbone, _ = build_backbone(parts["backbones"], recipe)
    size = image_size(recipe.img_size, splits.img_size, backbone.data_config)
    model = build_model(parts["heads"], backbone, len(splits.classes)).to(device)
    pipeline = build_pipeline(parts["augmentations"], backbone.data_config, size)
    numerics = numerics_for(recipe, model, device, size, pipeline.normalize)
    loaders = make_loaders(splits, pipeline, recipe, device, recipe.batch_size)
    spill = out / ".{}.features"  # where a cache too large for memory goes
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train = extract(model.backbone, loaders.plain, device, spill, numerics, "train")
    seconds = time.perf_counter() - started
    width = train.values.shape[-1]
    head = nn.Linear(width, len(splits.classes))
    probe = fit_probe(head, train, seed=recipe.seed)
    val_acc = None
    if len(loaders.val):
        val = extract(model.backbone, loaders.val, device, spill, numerics, "val")
        with torch.no_grad():
            predicted = head(val.values.float()).argmax(1)
        val_acc = (predicted == val.labels).float().mean().item()
        val.release()
    score = logme(train.values.float(), train.labels)
    train.release()
    return {
        "backbone": candidate.label,
        "weights": backbone.weights,
        "logme": score,
        "probe_held_out_acc": probe.held_out_acc,
        "probe_val_acc": val_acc,
        "params": count_params(list(model.backbone.parameters())),
        "images_per_s": len(splits.train) / max(seconds, 1e-9),
        "img_size": size,
        "num_features": width,
    }
