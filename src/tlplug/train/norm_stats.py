"""BatchNorm statistics from the training images, for layers that have none yet or are
about to normalise the training images with theirs (:mod:`tlplug.train.handover`).

A backbone built without pretrained weights (``--no-pretrained``) holds BatchNorm's initial
running statistics, mean 0 and variance 1, which normalise nothing. A stage that keeps
those layers frozen (in eval mode) then trains its head on unnormalised activations, and
the first stage that trains them switches BatchNorm to batch statistics, moving every
feature under the head: the README's demo loss went from 0.4 to 53 at the unfreeze.
Estimating the statistics from the training images once, before training, gives frozen and
training BatchNorm the same normalisation. Weights a user gives (pretrained, ``--weights``)
and a resumed run's are left exactly as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlplug.run import Run
from tlplug.train.feature_cache import Features
from tlplug.train.freezing import STAT_NORMS

SAMPLE = 1024  # training images at most: enough for a mean and variance per channel


def fresh_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics and still hold their
    initial ones: no batch seen, mean all 0, variance all 1."""
    found = []
    for module in model.modules():
        if not isinstance(module, STAT_NORMS) or not module.track_running_stats:
            continue
        if module.running_mean is None or module.running_var is None:
            continue
        seen = module.num_batches_tracked is not None and int(module.num_batches_tracked) > 0
        if not seen and not module.running_mean.any() and bool((module.running_var == 1).all()):
            found.append(module)
    return found


def estimate_batchnorm(run: Run, most: int = SAMPLE) -> int:
    """When the backbone starts from random weights, give ``run.model``'s fresh BatchNorm
    layers (:func:`fresh_batchnorms`) the statistics of the training images
    (:func:`estimate_statistics`); return how many layers that was."""
    if run.resolved.backbone.pretrained:
        return 0  # weights a user gave are kept as they are, statistics included
    layers = fresh_batchnorms(run.model)
    seconds, used = estimate_statistics(run, layers, 0, most)
    if used:
        run.console.say(
            f"BatchNorm statistics: {len(layers)} layers had none (weights not pretrained); "
            f"estimated from {used} training images in {seconds:.1f}s"
        )
    return len(layers) if used else 0


def recompute_statistics(
    run: Run, replay: Features | None = None, forward: nn.Module | None = None
) -> tuple[float, int]:
    """At the end of a training epoch: give the norm layers that ran in training mode the
    statistics of the training images through the weights as they are now; return the
    seconds and the images that took (0: no such layer). On a frozen-prefix replay the
    same images enter as their cached prefix outputs ``replay``, run through ``forward``.

    A layer in training mode normalises with each batch's statistics and moves its running
    ones 10% of the way towards them per step, which validation and the saved model use.
    With a few steps an epoch the running statistics lag the weights by epochs: on 60
    images (2 steps an epoch) a gradual unfreeze ended at chance with weights that score
    0.78 once their statistics are recomputed. Recomputed every epoch, they always
    describe the weights they are saved with (PreciseBN, Wu and Johnson 2021)."""
    layers = [
        module
        for module in run.model.modules()
        if isinstance(module, STAT_NORMS)
        and module.training
        and module.track_running_stats
        and module.running_mean is not None
    ]
    if replay is None:
        return estimate_statistics(run, layers, run.epoch)
    order = _drawn(run, run.epoch, lambda sampler: sampler.indices())
    values, labels = replay.view(run.epoch), replay.labels
    batches = [(values[order[at]], labels[order[at]]) for at in _sample(run, len(order))]
    world = run.world
    return _accumulate(run, layers, batches[world.rank :: world.size], forward or run.model)


def _drawn(run: Run, epoch: int, draw: Callable[[Any], Any]) -> Any:
    """``draw(sampler)`` with the training sampler set to ``epoch``, then set back."""
    sampler = run.loaders.train.sampler
    kept_epoch = sampler.epoch
    sampler.set_epoch(epoch)
    try:
        return draw(sampler)
    finally:
        sampler.set_epoch(kept_epoch)


def _sample(run: Run, count: int, most: int = SAMPLE) -> list[torch.Tensor]:
    """Batches of positions in an epoch's order of ``count`` images to estimate statistics
    on: up to ``most``, spread over the epoch, each the size of an optimizer step's batch (a
    last batch under half that size is left out, so every batch weighs alike)."""
    picked = torch.arange(count)[:: -(-count // most)]
    size = run.resolved.batch_size * run.recipe.accumulate  # the global batch
    if len(picked) > size and len(picked) % size < size / 2:
        picked = picked[: len(picked) // size * size]
    if len(picked) < 2:
        return []  # one image has no variance
    return list(picked.split(size))


@torch.no_grad()
def estimate_statistics(
    run: Run, layers: list[nn.Module], epoch: int, most: int = SAMPLE
) -> tuple[float, int]:
    """Give ``layers`` (BatchNorm layers of ``run.model``) the mean and variance of their
    inputs over up to ``most`` training images, spread over the set and augmented as
    ``epoch`` draws them, the rest of the model as it runs in eval mode (one
    pass, every batch weighted alike); return the seconds it took and the images used (0
    when there was nothing to estimate). The random number generators are left as they
    were, so the run trains as it would have, and the run's own loaders are not started
    (their worker processes must see the decoded-image cache the run sets up later)."""
    drawn = _drawn(run, epoch, lambda sampler: sampler.drawn())  # (image, item seed), in order
    batches = [[drawn[at] for at in index.tolist()] for index in _sample(run, len(drawn), most)]
    if not layers or not batches:
        return 0.0, 0
    train, world = run.loaders.train, run.world
    mine = batches[world.rank :: world.size]  # with several processes, each runs its part
    loader = DataLoader(
        train.dataset,
        batch_sampler=mine,
        num_workers=train.num_workers,
        collate_fn=train.collate_fn,
    )
    return _accumulate(run, layers, loader, run.model)


@torch.no_grad()
def _accumulate(
    run: Run, layers: list[nn.Module], batches: Iterable, forward: nn.Module
) -> tuple[float, int]:
    """Reset ``layers`` and average their input statistics over ``batches`` run through
    ``forward`` (everything else in eval mode); the seconds and the inputs it took. With
    several processes, each ran its part of the batches and the averages are pooled."""
    if not layers:
        return 0.0, 0
    started, used = time.perf_counter(), 0
    modes = {module: module.training for module in run.model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    cuda = [run.device] if run.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            run.model.eval()
            for layer in layers:
                layer.reset_running_stats()
                layer.momentum = None  # a cumulative average over the batches
                layer.train()
            done = 0
            for inputs, _ in batches:
                with run.numerics.autocast(run.device):
                    forward(run.numerics.inputs(inputs, run.device))
                used += len(inputs)
                done += 1
            if run.world.parallel:
                used = _pool(run, layers, done, used)
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return time.perf_counter() - started, used


def _pool(run: Run, layers: list[nn.Module], batches: int, images: int) -> int:
    """Pool each process's average of ``batches`` batches' statistics into the average
    over every process's batches (each batch weighing alike, as in one process); return
    the images used by all of them."""
    parts = [torch.tensor([batches, images], dtype=torch.float64)]
    for layer in layers:
        parts += [
            layer.running_mean.double().cpu() * batches,
            layer.running_var.double().cpu() * batches,
        ]
    total = run.world.add_up(torch.cat(parts))
    count, at = max(1.0, total[0].item()), 2
    for layer in layers:
        for stat in (layer.running_mean, layer.running_var):
            stat.copy_((total[at : at + len(stat)] / count).to(stat))
            at += len(stat)
        layer.num_batches_tracked.fill_(int(total[0].item()))
    return int(total[1].item())
