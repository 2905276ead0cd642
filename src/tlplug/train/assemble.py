"""Assembling a run: data, backbone, model, plan, optimizer, loaders and config, once.

Nothing here writes to the run directory, so a run that cannot be assembled leaves a
user's files as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from tlplug.compute.device import pick_device
from tlplug.compute.distributed import join, local_device
from tlplug.compute.precision import compile_for_training, numerics_for
from tlplug.compute.seeding import seed_everything
from tlplug.console import Console
from tlplug.data.decoded import decoding_plan
from tlplug.data.loaders import make_loaders
from tlplug.data.pipeline import build_pipeline, choose_batched, image_size
from tlplug.errors import OptionError
from tlplug.model.adapters import Adapter, attach_adapter
from tlplug.model.transfer import TransferModel
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import Parts, build_backbone, build_model, load_data, make_plan, probe
from tlplug.recipe import AUTO, Recipe
from tlplug.run import Run
from tlplug.rundir.config_record import resolve_record
from tlplug.search.lr_find import DEFAULT_LR
from tlplug.train.ema import WeightAverage
from tlplug.train.loss import TrainingLoss, class_weights
from tlplug.train.optimizer import build_optimizer, build_scheduler, lr_multipliers
from tlplug.train.preflight import random_features, unreached_groups, upscaled
from tlplug.train.step import fit_batch_size
from tlplug.train.teacher import Distillation, load_teacher


def assemble(
    plugins: PluginHost,
    parts: Parts,
    recipe: Recipe,
    data: str | os.PathLike | None,
    run_dir: Path,
    console: Console,
) -> Run:
    """Build everything a run of ``recipe`` on ``data`` needs, writing nothing."""
    seed_everything(recipe.seed)
    splits = load_data(plugins, data, recipe)
    device = pick_device(recipe.device)
    world = join(device)
    device = local_device(device, world)
    if not world.main:
        console = Console(quiet=True)  # rank 0 prints for the run
    backbone, report = build_backbone(parts["backbones"], recipe)
    config = backbone.data_config
    img_size = image_size(recipe.img_size, splits.img_size, config)
    probe(backbone, img_size, recipe.backbone)
    model = build_model(parts["heads"], backbone, len(splits.classes))
    adapter = _adapter(parts, model)
    plan, planned = make_plan(parts["schedules"], model.group_names(), recipe.epochs)
    model.to(device)
    loss = _loss(parts, model, splits, recipe)  # penalties see the starting weights
    batched, why = choose_batched(parts["augmentations"], recipe.augment_path, device.type)
    pipeline = build_pipeline(parts["augmentations"], config, img_size, batched)
    numerics = numerics_for(recipe, model, device, img_size, pipeline.normalize)
    loss.distillation = _distillation(plugins, parts, recipe, device, splits, pipeline, numerics)
    batch_size = recipe.batch_size
    world.per_process(batch_size)  # the global batch must split over the processes
    if recipe.auto_batch_size:
        if world.parallel:
            raise OptionError("--auto-batch-size runs in one process; give --batch-size")
        batch_size = fit_batch_size(
            model, batch_size, img_size, len(splits.classes), device, numerics
        )
    loaders = make_loaders(splits, pipeline, recipe, device, batch_size, world)
    multipliers = lr_multipliers(model.group_names(), recipe)
    # --lr auto: built again once the range test has chosen (tlplug.search.lr_find.tune_lr)
    optimizer = build_optimizer(model, _settled(recipe), multipliers)
    steps = -(-len(loaders.train) // recipe.accumulate)  # optimizer steps per epoch
    resolved = resolve_record(
        recipe,
        parts,
        plugins.kinds,
        model,
        splits,
        plan,
        backbone,
        report,
        img_size=img_size,
        batch_size=batch_size,
        steps_per_epoch=steps,
        lr_multipliers=multipliers,
        decoded_images=decoding_plan(loaders.all()),
        details={
            "workers": loaders.workers,
            "processes": world.size,
            "batch_per_process": batch_size // world.size,
            "device": str(device),
            "augmentation": pipeline.describe(why),
            "teacher": loss.distillation.record if loss.distillation else None,
            "warnings": [
                line
                for line in (
                    unreached_groups(plan, planned, model.group_names(), recipe.epochs),
                    random_features(plan, backbone.trained, model.group_names()[-1]),
                    upscaled(splits.train, img_size, splits.img_size, recipe.img_size),
                )
                if line
            ],
            **numerics.describe(),
        },
    )
    run = Run(
        recipe,
        resolved,
        model,
        optimizer,
        build_scheduler(parts["lr-schedules"], optimizer, recipe.epochs, steps),
        run_dir,
        device,
        numerics,
        adapter=adapter,
        loss=loss,
        parts=parts,
        data=splits,
        loaders=loaders,
        pipeline=pipeline,
        console=console,
        plugins=plugins,
        compiled=compile_for_training(model, device) if recipe.compile else None,
        ema=WeightAverage(model, recipe.ema) if recipe.ema else None,
        world=world,
    )
    return run


def _settled(recipe: Recipe) -> Recipe:
    """``recipe`` with a number for the LR: with ``lr="auto"`` the default, for now."""
    if recipe.lr != AUTO:
        return recipe
    return attrs.evolve(recipe, lr=DEFAULT_LR)


def _adapter(parts: Parts, model: TransferModel) -> Adapter | None:
    choice = parts["adapters"]
    if choice is None:
        return None
    return attach_adapter(model, choice.strategy.factory, choice.options, choice.strategy.name)


def _loss(parts: Parts, model: TransferModel, splits, recipe: Recipe) -> TrainingLoss:
    """Cross-entropy with the recipe's smoothing and class weights, plus the regularizers'
    penalties, made while the model holds its starting weights."""
    penalties = [c.strategy.factory(model, **c.options) for c in parts["regularizers"]]
    weights = None
    if recipe.balance == "loss":
        weights = class_weights(splits.train.labels, len(splits.classes))
    return TrainingLoss(len(splits.classes), recipe.label_smoothing, weights, penalties)


def _distillation(
    plugins: PluginHost,
    parts: Parts,
    recipe: Recipe,
    device,
    splits,
    pipeline,
    numerics,
) -> Distillation | None:
    """The teacher named by ``--teacher`` and the chosen distillation loss; None without a
    teacher."""
    if recipe.teacher is None:
        return None
    teacher, record = load_teacher(
        recipe.teacher, plugins, device, splits.classes, pipeline.normalize, numerics.dtype
    )
    choice = parts["distillation-losses"]
    return Distillation(teacher, choice.strategy.factory(**choice.options), record)
