"""The LR range test (``tlplug lr-find``, ``--lr auto``): fastai's ``lr_find`` on a run's
own recipe.

The base learning rate grows geometrically, one factor per optimizer step, from
``start_lr`` to ``end_lr`` while one stage of the run trains: the run's model, optimizer,
loss and training step (:func:`tlplug.train.step.train_epoch`: precision, batch
augmentation, ``--accumulate``), each group's LR its multiplier (``--lr-mult``,
``--lr-decay``) and the stage's ``lr_scale`` times the base LR. The loss is smoothed
(:mod:`tlplug.search.lr_curve`) and the test stops once it is four times its minimum or not
finite. The training batches are cycled when the test has more steps than an epoch.

Which stage: by default the first whose learning rate matters. A stage that trains only a
linear head on cached features fits it by L-BFGS (``--probe converge``) and uses no LR, so
its head is fit here as the run would fit it and the next stage is swept, from where it
starts. A head stage that takes optimizer steps (``--probe epochs``, a head that is not one
linear layer) is swept on the feature cache, which is cheap: the backbone runs once per
image, then every step is the head alone. Other stages step on images.

The test is not training: the weights, BatchNorm statistics, optimizer state, which
parameters train, module modes and random state are put back as they were.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import attrs
import numpy as np
import torch

from tlplug.compute.seeding import epoch_seed, seed_everything
from tlplug.errors import OptionError, TlplugError, flag
from tlplug.model.transfer import HEAD_GROUP
from tlplug.recipe import Settings
from tlplug.run import Run, Source, Step
from tlplug.search.lr_curve import (
    DIVERGED,
    END_LR,
    START_LR,
    STEPS,
    RangeTest,
    smooth,
    suggest,
    sweep_lrs,
)
from tlplug.train.feed import Feed, choose_source, feeding
from tlplug.train.freezing import apply_stage, train_mode
from tlplug.train.handover import final_probe, hand_over
from tlplug.train.optimizer import build_optimizer, build_scheduler
from tlplug.train.probe import fit_run_probe
from tlplug.train.snapshot import kept
from tlplug.train.step import NonFinite, train_epoch

DEFAULT_LR = attrs.fields(Settings).lr.default  # what --lr auto keeps when no stage uses it
UNUSED = (
    "no stage of this recipe uses the learning rate: each fits its linear head by L-BFGS "
    "(--probe converge)"
)


def check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """Refuse a sweep no test can run, naming the options as the user gave them."""
    if not 0 < start_lr < end_lr:
        raise OptionError(
            f"{flag('start_lr')} must be above 0 and below {flag('end_lr')}, "
            f"got {start_lr:g} and {end_lr:g}"
        )
    if steps < 2:
        raise OptionError(f"{flag('steps')} must be at least 2, got {steps}")


def range_test(
    run: Run,
    *,
    stage: int | None = None,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    always: bool = True,
) -> RangeTest | None:
    """Sweep the base LR over ``steps`` optimizer steps of stage ``stage`` (from 1; None:
    the first whose LR matters) of the assembled ``run``, and put the run back as it was.
    When no stage uses the LR, sweep the first one anyway with a note, or with ``always``
    False return None."""
    check_sweep(start_lr, end_lr, steps)
    plan = run.plan
    if stage is not None and not 1 <= stage <= len(plan):
        names = ", ".join(f"{i} ({s.name})" for i, s in enumerate(plan, start=1))
        raise OptionError(f"{flag('stage', stage)}: this run's plan has stages {names}")
    lrs = sweep_lrs(start_lr, end_lr, steps)
    started = time.perf_counter()
    swept = _test(run, None if stage is None else stage - 1, lrs)
    notes: tuple[str, ...] = ()
    if swept is None:
        if not always:
            return None
        notes = (f"note: {UNUSED}; sweeping stage 1 as --probe epochs would train it",)
        swept = _test(run, 0, lrs)
    index, inputs, sweep, more = swept
    smoothed = tuple(smooth(sweep.losses))
    try:
        suggestions = suggest(sweep.taken, smoothed, steps)
    except ValueError:
        raise TlplugError(
            f"the loss was not finite from the range test's first step at lr {start_lr:g}; "
            f"try a lower {flag('start_lr')}"
        ) from None
    return RangeTest(
        index + 1,
        plan[index].name,
        tuple(sweep.taken),
        tuple(sweep.losses),
        smoothed,
        suggestions,
        start_lr,
        end_lr,
        steps,
        inputs,
        sweep.requested,
        time.perf_counter() - started,
        notes + tuple(more),
    )


def tune_lr(run: Run) -> RangeTest | None:
    """``--lr auto``: run the range test on ``run`` (assembled with ``lr="auto"``), then
    make the valley suggestion its base LR, recorded in config.json's ``resolved.lr``, and
    build its optimizer and LR schedule again for it. Return the test (None when no stage
    uses the LR: the base LR is then left at the default)."""
    test = range_test(run, always=False)
    lr = test.suggested if test is not None else DEFAULT_LR
    if test is None:
        run.console.say(f"lr auto: {UNUSED}; lr stays {lr:g}")
    else:
        run.console.say(
            f"lr auto: range test over {len(test.lrs)} steps suggests {lr:g} (lr_find.png)"
        )
    run.recipe = attrs.evolve(run.recipe, lr=lr)
    resolved = run.resolved = attrs.evolve(
        run.resolved, lr=lr, lr_find=test.summary() if test else None
    )
    run.optimizer = build_optimizer(run.model, run.recipe, resolved.lr_multipliers)
    run.lr_scheduler = build_scheduler(
        run.parts["lr-schedules"], run.optimizer, run.recipe.epochs, resolved.steps_per_epoch
    )
    return test


def _test(run: Run, wanted: int | None, lrs: list[float]):
    """(stage index, its inputs, the :class:`_Sweep`, notes) of a sweep of stage ``wanted``
    (None: the first whose LR matters; None returned when there is none)."""
    with kept(run), contextlib.ExitStack() as stages:
        reached = _reach(run, wanted, stages)
        if reached is None:
            return None
        index, feed, notes = reached
        sweep = _sweep(run, index, feed, lrs)
        return index, "cached features" if feed.cached else "images", sweep, notes


def _reach(run: Run, wanted: int | None, stages: contextlib.ExitStack):
    """Enter the stages in order up to the one to sweep, fitting the heads of those before
    it that fit theirs by L-BFGS; return (its index, its feed, notes) or None."""
    notes: list[str] = []
    for index, stage in enumerate(run.plan[: None if wanted is None else wanted + 1]):
        run.epoch, run.stage = stage.start + 1, index
        apply_stage(run.model, stage)
        last, head = index == wanted, stage.trainable == (HEAD_GROUP,) and not stage.biases
        skipped = f"note: stage {index + 1} ({stage.name}) is not trained before the test"
        if not head and (wanted is None or last):  # steps on images: no prefix cache to fill
            if index:
                hand_over(run, index)  # as the run starts the stage
            return index, stages.enter_context(feeding(run, Source(), None)), notes
        if not head or (not last and wanted is not None and run.recipe.probe != "converge"):
            notes.append(skipped)
            continue
        with contextlib.ExitStack() as this:
            run.source, cut = choose_source(run, stage)
            feed = this.enter_context(feeding(run, run.source, cut))
            if last or (wanted is None and feed.features is None):
                if feed.features is not None:
                    notes.append(
                        f"note: the run fits stage {index + 1}'s head by L-BFGS "
                        "(--probe converge); its LR is not used"
                    )
                stages.enter_context(this.pop_all())
                return index, feed, notes
            if feed.features is None:  # the head takes optimizer steps
                notes.append(skipped)
                continue
            fit_run_probe(run, feed.features, final=final_probe(run, index))
    return None


class _Sweep:
    """Sets the base LR of each step (train_epoch steps it as its LR scheduler), records
    the loss of each optimizer step and asks to stop (as a stop request) once the smoothed
    loss diverges or is not finite."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, lrs: list[float], scale: float, accumulate: int
    ):
        self.optimizer, self.lrs, self.scale, self.accumulate = optimizer, lrs, scale, accumulate
        self.taken: list[float] = []  # the base LR of each recorded step
        self.losses: list[float] = []
        self.requested: str | None = None  # why the test stopped early
        self.batches: list[float] = []
        self.steps = 0
        self._set(0)

    def _set(self, index: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[index] * group.get("lr_mult", 1.0) * self.scale

    def step(self) -> None:
        """After an optimizer step: the next step's LR."""
        self.steps += 1
        if self.steps < len(self.lrs):
            self._set(self.steps)

    def record(self, step: Step) -> None:
        """After a batch: the step's loss, once its last batch is in."""
        self.batches.append(step.loss)
        if step.index % self.accumulate:
            return
        self.taken.append(self.lrs[len(self.losses)])
        self.losses.append(sum(self.batches) / len(self.batches))
        self.batches = []
        smoothed = smooth(self.losses)
        if not np.isfinite(smoothed[-1]):
            self.requested = "non-finite"
        elif smoothed[-1] > DIVERGED * min(smoothed):
            self.requested = "diverged"


def _sweep(run: Run, index: int, feed: Feed, lrs: list[float]) -> _Sweep:
    """Take ``len(lrs)`` optimizer steps of stage ``index`` on ``feed``, one LR each."""
    recipe, stage = run.recipe, run.plan[index]
    if not len(feed.train):
        raise TlplugError("the range test has no training batches to step on")
    seed_everything(epoch_seed(recipe.seed, run.epoch))
    train_mode(run.model, stage, recipe.bn_policy)
    sweep = _Sweep(run.optimizer, lrs, stage.lr_scale, recipe.accumulate)
    batches = _Cycled(
        feed.train, len(lrs) * recipe.accumulate, run.loaders.train.sampler, run.epoch
    )
    run.optimizer.zero_grad(set_to_none=True)
    train_epoch(
        feed.step_inputs(run),
        batches,
        run.optimizer,
        sweep,
        _Labelled(run.console),
        run.epoch,
        stop=sweep,
        nonfinite=NonFinite(len(batches)),
        on_step=sweep.record,
    )
    return sweep


class _Cycled:
    """``total`` batches of ``batches``, starting it over (the next epoch's order) as often
    as needed."""

    def __init__(self, batches, total: int, sampler, epoch: int):
        self.batches, self.total, self.sampler, self.epoch = batches, total, sampler, epoch

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator:
        given, epoch = 0, self.epoch
        while True:
            self.sampler.set_epoch(epoch)
            for batch in self.batches:
                yield batch
                given += 1
                if given == self.total:
                    return
            epoch += 1


class _Labelled:
    """The run's console, its progress bar labelled for the test."""

    def __init__(self, console):
        self.console = console

    def progress(self, items, total: int, label: str):
        return self.console.progress(items, total, "lr range test")
