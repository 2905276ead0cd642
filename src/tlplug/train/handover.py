"""What a stage does before its first step when it trains layers that were frozen.

A frozen group runs in eval mode: its BatchNorm layers normalise with the running statistics
of the data the weights were trained on. Once the group trains, they normalise with the
statistics of each batch of the new images, so the features under the head change the
moment the stage starts, before any weight has moved. A head fit to the frozen features
(the converged probe) then meets other features. Measured on 60 digit images with resnet18
weights pretrained on other digits and photos, the training loss of the probe's head went
from 0.14 to 0.87 at the unfreeze before the first optimizer step (0.02 to 1.37 from
weights trained longer), and fine-tuning spent its epochs recovering, often below the probe.

So a stage starts where its steps will be: the BatchNorm layers it newly trains get the mean
and variance of their inputs over the training images (one pass, as a backbone without
pretrained weights gets them, :mod:`tlplug.train.norm_stats`), and a head the stage before
fit by the probe is fit again, on the features those statistics give. The stage before keeps
its own probe, fit on the pretrained statistics: its epoch is scored and kept like any other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tlplug.recipe import BnPolicy
from tlplug.run import Run
from tlplug.train.feed import fits_by_probe, head_features
from tlplug.train.freezing import STAT_NORMS
from tlplug.train.norm_stats import estimate_statistics
from tlplug.train.probe import fit_run_probe
from tlplug.train.stages import Stage


def unfrozen_norms(
    model: Any, previous: Stage, stage: Stage, bn_policy: BnPolicy
) -> list[nn.Module]:
    """The norm layers with running statistics that run in eval mode in ``previous`` and
    in training mode in ``stage``: those of the groups ``stage`` newly trains, under the
    ``frozen`` BatchNorm policy (``eval`` keeps them in eval mode, ``train`` never had them
    there)."""
    if bn_policy != "frozen":
        return []
    newly = set(stage.training) - set(previous.training)
    owners = model.group_modules()
    return [
        module
        for path, module in model.named_modules()
        if isinstance(module, STAT_NORMS)
        and module.track_running_stats
        and module.running_mean is not None
        and owners.get(path) in newly
    ]


def refits(run: Run, index: int) -> bool:
    """Whether stage ``index`` starts by fitting the head again: the stage before fit it by
    the probe, and norm layers under it change their statistics."""
    if not 0 < index < len(run.plan):
        return False
    previous, stage = run.plan[index - 1], run.plan[index]
    return fits_by_probe(run, previous) and bool(
        unfrozen_norms(run.model, previous, stage, run.recipe.bn_policy)
    )


def final_probe(run: Run, index: int) -> bool:
    """Whether the probe that head stage ``index`` fits is an end product rather than the
    start of fine-tuning: no stage follows, or the next one fits the head again. The probe
    chooses its L2 strength by this (:func:`tlplug.train.probe.choose_l2`)."""
    return index == len(run.plan) - 1 or refits(run, index + 1)


def hand_over(run: Run, index: int) -> dict[str, Any] | None:
    """Before stage ``index`` (after the first) trains: the statistics of the norm layers
    it newly trains from the training images as its first epoch draws them, then the
    head refit if :func:`refits`; return what was done, for the stage's first record, or
    None when nothing changes."""
    previous, stage = run.plan[index - 1], run.plan[index]
    layers = unfrozen_norms(run.model, previous, stage, run.recipe.bn_policy)
    seconds, used = estimate_statistics(run, layers, run.epoch)
    if not used:
        return None
    done: dict[str, Any] = {"norm_layers": len(layers), "images": used}
    line = f"{len(layers)} BatchNorm layers start from the statistics of {used} training images"
    if refits(run, index):
        features = head_features(run)
        try:
            fit = fit_run_probe(run, features, final=False)
        finally:
            features.release()
        done["probe"] = fit.to_json()
        seconds += fit.seconds
        line += f"; the head is fit again on the features they give (L2 {fit.l2:g})"
    done["seconds"] = round(seconds, 3)
    run.console.say(f"stage {index + 1} ({stage.name}): {line}, {seconds:.1f}s")
    return done
