"""One epoch of a run: train on the stage's feed, validate, and the epoch's metrics record."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs

from tlplug.compute.memory import peak_mb, reset_peak
from tlplug.compute.seeding import epoch_seed, seed_everything
from tlplug.run import Run, Step
from tlplug.train.feed import Feed
from tlplug.train.freezing import train_mode
from tlplug.train.handover import final_probe
from tlplug.train.interrupt import StopRequest
from tlplug.train.norm_stats import recompute_statistics
from tlplug.train.optimizer import group_lrs
from tlplug.train.probe import fit_run_probe
from tlplug.train.step import EpochStats, Evaluation, NonFinite, evaluate, train_epoch


@attrs.frozen
class EpochResult:
    """What an epoch's training and validation gave; ``val`` is None on an epoch that does
    not validate (``--val-every``, ``--val-split 0``), ``ema`` the validation of the weight
    average (``--ema``)."""

    train: EpochStats
    val: Evaluation | None
    ema: Evaluation | None = None

    def best_of_epoch(self) -> tuple[Evaluation | None, str]:
        """The better validation of the epoch, and whose it is: ``model`` or ``ema``."""
        if self.ema is not None and _score(self.ema) > _score(self.val):
            return self.ema, "ema"
        return self.val, "model"


def _score(val: Evaluation) -> tuple[float, float]:
    return val.stats.acc, -val.stats.loss


def run_epoch(
    run: Run,
    feed: Feed,
    stop: StopRequest,
    nonfinite: NonFinite,
    on_step: Callable[[Step], None] | None = None,
) -> EpochResult:
    """Train ``run.epoch`` on ``feed`` and validate when the epoch is due."""
    recipe, epoch = run.recipe, run.epoch
    seed_everything(epoch_seed(recipe.seed, epoch))
    run.loaders.train.sampler.set_epoch(epoch)
    train_mode(run.model, run.plan[run.stage], recipe.bn_policy)
    reset_peak(run.device)
    batches = len(run.loaders.train)
    steps = -(-batches // recipe.accumulate)
    if feed.features is not None:
        train = converge(run, feed, steps)
    else:
        train = train_epoch(
            feed.step_inputs(run),
            feed.train,
            run.optimizer,
            run.lr_scheduler,
            run.console,
            epoch,
            stop=stop,
            nonfinite=nonfinite,
            on_step=on_step,
            first_step=(epoch - 1) * batches + 1,
            after_step=run.ema.update if run.ema else None,
        )
    if not train.complete:
        return EpochResult(train, None)
    if feed.features is None and not feed.cached:  # norm layers may have trained
        replayed = (feed.train.features, feed.stepped) if feed.replay else (None, None)
        seconds, images = recompute_statistics(run, *replayed)
        train = attrs.evolve(train, seconds=train.seconds + seconds, norm_images=images)
    run.step += steps
    if not len(run.loaders.val) or not (epoch % recipe.val_every == 0 or epoch == recipe.epochs):
        return EpochResult(train, None)
    val = validate(run, feed)
    run.lr_scheduler.epoch_end(val.stats.loss)
    if run.ema is None:
        return EpochResult(train, val)
    with run.ema.swapped_in(run.model):
        return EpochResult(train, val, validate(run, feed))


def converge(run: Run, feed: Feed, steps: int) -> EpochStats:
    """Fit the stage's linear head to convergence in its first epoch; later epochs of the
    stage have nothing left to train. The LR schedule moves on as epochs of ``steps``
    optimizer steps would move it, so the stages after see the learning rates they would."""
    run.lr_scheduler.skip(steps)
    if feed.converged:
        return EpochStats(*feed.converged, images=0, seconds=0.0)
    fit = fit_run_probe(run, feed.features, final=final_probe(run, run.stage))
    if run.ema is not None:
        run.ema.follow(run.model, start=True)  # the fit head is its own average
    feed.converged, feed.starting["probe"] = (fit.loss, fit.acc), fit.to_json()
    return EpochStats(fit.loss, fit.acc, fit.images * feed.features.views, fit.seconds)


def validate(run: Run, feed: Feed) -> Evaluation:
    """Loss, accuracy and confusion of the model as it is, on the validation images."""
    progress = functools.partial(run.console.progress, label=f"epoch {run.epoch} val")
    return evaluate(
        feed.net, feed.val, run.device, len(run.classes), run.numerics, progress, run.world
    )


def epoch_record(
    run: Run,
    feed: Feed,
    result: EpochResult,
    trainable: int,
    nonfinite: NonFinite,
) -> dict[str, Any]:
    """The line of metrics.jsonl for the epoch just run."""
    stage = run.plan[run.stage]
    train, val = result.train, result.val
    filled, feed.filled = feed.filled, None
    starting, feed.starting = feed.starting, {}
    fill_seconds = filled[0] if filled else 0.0
    return {
        "epoch": run.epoch,
        "stage": run.stage,
        "stage_name": stage.name,
        **starting,
        "trainable_groups": list(stage.trainable),
        "bias_groups": list(stage.biases),
        "trainable_params": trainable,
        "bn_policy": run.recipe.bn_policy,
        "lr_scale": stage.lr_scale,
        "train_loss": train.loss,
        **({"train_labels_loss": train.labels_loss} if train.labels_loss is not None else {}),
        "train_acc": train.acc,
        "val_loss": val.stats.loss if val else None,
        "val_acc": val.stats.acc if val else None,
        **(
            {"ema_val_loss": result.ema.stats.loss, "ema_val_acc": result.ema.stats.acc}
            if result.ema
            else {}
        ),
        "lr": group_lrs(run.optimizer),
        "seconds": round(train.seconds + (val.stats.seconds if val else 0.0) + fill_seconds, 3),
        "images_per_s": round(train.images / max(train.seconds, 1e-9), 1),
        "cache_seconds": round(filled[0], 3) if filled else None,
        "cache_images_per_s": round(filled[1] / filled[0], 1) if filled else None,
        "norm_stats_images": train.norm_images,
        "skipped_nonfinite": nonfinite.skipped,
        "feature_cache": feed.cached,
        "prefix_cache": run.source.cut if feed.replay else None,
        "peak_memory_mb": peak_mb(run.device),
    }
