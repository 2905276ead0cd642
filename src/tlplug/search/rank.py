"""``tlplug rank``: which backbone to fine-tune, from one forward pass per image each.

Each candidate backbone (``timm:resnet50``, or ``timm:resnet50@weights.safetensors`` with
weights of its own) runs once over the training and validation images, as the recipe
preprocesses them without augmentation, in the recipe's precision. On its features:

- LogME (:mod:`tlplug.search.logme`), a transferability score that needs no training;
- the converged linear probe tlplug fits in a head stage, with its accuracy on a held-out
  fifth of the training images and on the validation images;
- its parameters and the images per second of its forward pass.

The features are kept on disk (:mod:`tlplug.search.feature_store`), so a later rank of the
same backbone, weights, data and image size reads them instead of building the model. The
table is sorted by LogME and written, with rank.json and a plot of score against speed, to
the rank's directory.
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
from tlplug.search import feature_store
from tlplug.search.logme import logme
from tlplug.train.feature_cache import Features, extract
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
    cache: Path | None = None,
) -> list[dict[str, Any]]:
    """Score every candidate on ``data`` (see the module's docstring); write rank.json and
    rank.png to ``out`` and return the rows, best LogME first. Features are read from and
    kept in the feature store ``cache`` (None: computed every time, kept nowhere)."""
    if not candidates:
        raise OptionError("give at least one --backbone to rank")
    rundir.check_run_dir(out, False)
    seed_everything(recipe.seed)
    splits = load_data(host, data, recipe)
    device = pick_device(recipe.device)
    common = {"data": feature_store.data_digest(splits), "device": device.type}
    rows = []
    for candidate in candidates:
        chosen = attrs.evolve(
            recipe,
            backbone=candidate.backbone,
            weights=candidate.weights or recipe.weights,
            augment=(),
        )
        console.say(f"rank: {candidate.label}")
        key = feature_store.entry_key({**common, **_features_of(chosen, splits)})
        found = feature_store.load(cache, key) if cache is not None else None
        if found is None:
            tensors, record = _extract(host, chosen, splits, device, out)
            if cache is not None:
                feature_store.store(cache, key, tensors, record)
        else:
            tensors, record = found
        rows.append(_score(candidate, tensors, record, recipe.seed, cached=found is not None))
    rows.sort(key=lambda row: row["logme"], reverse=True)
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / RANK_JSON, {"data": splits.info, "backbones": rows})
    from tlplug.plotting import draw_rank, save_png

    save_png(draw_rank(rows), out / RANK_PLOT)
    return rows


def _features_of(recipe: Recipe, splits) -> dict[str, Any]:
    """What a backbone's features depend on, besides the data and the device."""
    if recipe.weights:
        path = Path(recipe.weights)
        weights = f"sha256 {feature_store.file_digest(path)}" if path.is_file() else str(path)
    else:
        weights = "pretrained" if recipe.pretrained else f"random, seed {recipe.seed}"
    return {
        "backbone": recipe.backbone,
        "backbone_opts": recipe.backbone_opts,
        "weights": weights,
        "img_size": recipe.img_size or splits.img_size,
        "precision": recipe.precision,
    }


def _extract(
    host: PluginHost, recipe: Recipe, splits, device, out: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One forward pass of the recipe's backbone over the training and validation images:
    the features and labels, and what was measured (weights, parameters, size, speed)."""
    seed_everything(recipe.seed)  # random weights do not depend on the candidates before
    parts = resolve(host, recipe)
    backbone, _ = build_backbone(parts["backbones"], recipe)
    size = image_size(recipe.img_size, splits.img_size, backbone.data_config)
    model = build_model(parts["heads"], backbone, len(splits.classes)).to(device)
    pipeline = build_pipeline(parts["augmentations"], backbone.data_config, size)
    numerics = numerics_for(recipe, model, device, size, pipeline.normalize)
    loaders = make_loaders(splits, pipeline, recipe, device, recipe.batch_size)
    spill = out / ".{}.features"  # where a cache too large for memory goes
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    started = time.perf_counter()
    for name, loader in (("train", loaders.plain), ("val", loaders.val)):
        if name == "val" and not len(loader):
            width = tensors["train"].shape[-1]
            features = Features(torch.empty(0, width), torch.empty(0, dtype=torch.long))
        else:
            features = extract(model.backbone, loader, device, spill, numerics, name)
        tensors[name], tensors[f"{name}_labels"] = features.values.clone(), features.labels
        features.release()
        if name == "train":
            seconds = time.perf_counter() - started
    record = {
        "weights": backbone.weights,
        "params": count_params(list(model.backbone.parameters())),
        "images_per_s": len(splits.train) / max(seconds, 1e-9),
        "img_size": size,
        "classes": len(splits.classes),
    }
    return tensors, record


def _score(
    candidate: Candidate, tensors: dict[str, torch.Tensor], record: dict, seed: int, cached: bool
) -> dict[str, Any]:
    train, labels = tensors["train"].float(), tensors["train_labels"]
    seed_everything(seed)  # the probe starts from the same head, computed or cached
    head = nn.Linear(train.shape[-1], record["classes"])
    probe = fit_probe(head, Features(train, labels), seed=seed)
    val_acc = None
    if len(tensors["val"]):
        with torch.no_grad():
            predicted = head(tensors["val"].float()).argmax(1)
        val_acc = (predicted == tensors["val_labels"]).float().mean().item()
    weights = record["weights"]  # as computed; a cached file's copy is named as given now
    if candidate.weights:
        weights = f"file {Path(candidate.weights).resolve()}"
    return {
        "backbone": candidate.label,
        "weights": weights,
        "logme": logme(train, labels),
        "probe_held_out_acc": probe.held_out_acc,
        "probe_val_acc": val_acc,
        "params": record["params"],
        "images_per_s": record["images_per_s"],
        "img_size": record["img_size"],
        "num_features": train.shape[-1],
        "features": "cached" if cached else "computed",
    }


def rank_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rank's rows as the lines of a table, in their order."""
    width = max(len("backbone"), *(len(r["backbone"]) for r in rows))
    lines = [f"{'backbone':<{width}}  LogME    probe held-out  probe val  params      img/s"]
    for r in rows:
        val = f"{r['probe_val_acc']:.4f}" if r["probe_val_acc"] is not None else "-"
        lines.append(
            f"{r['backbone']:<{width}}  {r['logme']:<7.4f}  {r['probe_held_out_acc']:<14.4f}  "
            f"{val:<9}  {r['params']:<10,}  {r['images_per_s']:.0f}"
        )
    return lines
