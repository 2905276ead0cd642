"""BatchNorm statistics for layers that have none yet.

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

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from tlplug.backbone import RANDOM_INIT
from tlplug.run import Run

SAMPLE = 1024  # training images at most: enough for a mean and variance per channel


def fresh_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics and still hold their
    initial ones: no batch seen, mean all 0, variance all 1."""
    found = []
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or not module.track_running_stats:
            continue
        if module.running_mean is None or module.running_var is None:
            continue
        seen = module.num_batches_tracked is not None and int(module.num_batches_tracked) > 0
        if not seen and not module.running_mean.any() and bool((module.running_var == 1).all()):
            found.append(module)
    return found


@torch.no_grad()
def estimate_batchnorm(run: Run, most: int = SAMPLE) -> int:
    """When the backbone starts from random weights, give ``run.model``'s fresh BatchNorm
    layers (:func:`fresh_batchnorms`) the mean and variance of their inputs over up to
    ``most`` training images, spread over the set and augmented as an epoch of training
    draws them (one pass, every batch weighted alike); return how many layers that was.
    The random number generators are left as they were, so the run trains as it would
    have, and the run's own loaders are not started (their worker processes must see the
    decoded-image cache the run sets up later)."""
    if run.config["resolved"]["backbone"]["weights"] != RANDOM_INIT:
        return 0  # weights a user gave are kept as they are, statistics included
    layers = fresh_batchnorms(run.model)
    if not layers:
        return 0
    started = time.perf_counter()
    train = run.loaders.train
    drawn = list(train.sampler)  # (image, augmentation seed): one epoch's, in its order
    picked = drawn[:: -(-len(drawn) // most)]
    size = train.batch_size * run.recipe.accumulate  # the batch an optimizer step sees
    whole = len(picked) > size  # a ragged last batch left out, as training leaves it out
    loader = DataLoader(
        train.dataset, batch_size=size, sampler=picked, drop_last=whole,
        num_workers=train.num_workers,
    )  # fmt: skip
    used = len(picked) // size * size if whole else len(picked)
    if used < 2:
        return 0  # one image has no variance
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
            for images, _ in loader:
                with run.numerics.autocast(run.device):
                    run.model(run.numerics.inputs(images, run.device))
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    run.console.say(
        f"BatchNorm statistics: {len(layers)} layers had none (weights not pretrained); "
        f"estimated from {used} training images in {time.perf_counter() - started:.1f}s"
    )
    return len(layers)
