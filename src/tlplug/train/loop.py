"""The run loop: enter the epoch's stage, run the epoch, record it, end it; then finish.

Everything that observes a run (the console, metrics.jsonl, loggers) is a plugin on the
lifecycle hooks. The loop keeps only what must be ordered with the weights: at the end of
an epoch the best weights and the resume state are queued together on the background
writer, after every ``tlplug_epoch_end`` hook has run, so a slow plugin never holds the
writer and the resume state never names weights that are not queued before it.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import attrs

from tlplug.data.decoded import keep_decoded
from tlplug.run import Run
from tlplug.rundir import checkpoint
from tlplug.rundir import layout as rundir
from tlplug.rundir.summary import summarize
from tlplug.rundir.weights import save_weights
from tlplug.rundir.writer import BackgroundWriter
from tlplug.train.best_so_far import Tally
from tlplug.train.epoch import EpochResult, epoch_record, run_epoch
from tlplug.train.feed import Feed, choose_source, feeding
from tlplug.train.freezing import apply_stage
from tlplug.train.handover import hand_over
from tlplug.train.interrupt import Interrupted, StopRequest
from tlplug.train.optimizer import stage_lrs
from tlplug.train.rollback import StageGuard, compared_loss
from tlplug.train.stages import stage_at
from tlplug.train.step import Diverged, NonFinite, OutOfMemory

DECODE_FAILURES = ".decode-failures"  # appended to by loader processes, read at the end


@attrs.frozen
class FitResult:
    """What :meth:`Engine.fit <tlplug.Engine.fit>` returns: the outcome and where the run
    directory is."""

    best_val_acc: float
    best_epoch: int
    final_val_acc: float
    run_dir: Path
    history: list[dict[str, Any]]


def train(run: Run, tally: Tally) -> FitResult:
    """Train from the epoch after ``run.epoch`` to the last; ``tally`` carries a resumed
    run's best result, time and skipped batches."""
    with Sitting(run, tally) as sitting:
        for epoch in range(run.epoch + 1, run.recipe.epochs + 1):
            feed = sitting.enter_stage(epoch)
            result = sitting.run_epoch(feed)
            record = epoch_record(run, feed, result, sitting.trainable, sitting.nonfinite)
            if not sitting.end_epoch(record, result):
                break
    if not run.world.main:  # rank 0 writes the summary; every process trained the same
        return FitResult(
            tally.best_acc if tally.validated else None,
            tally.best_epoch,
            run.history[-1]["val_acc"],
            run.run_dir,
            run.history,
        )
    summary = summarize(run, tally, run.run_dir / DECODE_FAILURES)
    try:
        run.hook.tlplug_run_end(run=run, summary=summary)
    finally:  # the run is over: a plugin failing at its end must not lose the summary
        rundir.write_json(run.run_dir / rundir.SUMMARY, summary)
    if not run.recipe.keep_state:  # finished: what predict, eval and export need stays
        checkpoint.remove_state(run.run_dir)
    return FitResult(
        summary["best_val_acc"],
        tally.best_epoch,
        summary["final_val_acc"],
        run.run_dir,
        run.history,
    )


class Sitting:
    """One sitting of training, from a fresh or resumed start to the end or an error: the
    stop request, the checkpoint writer, the decoded images and the current stage's feed."""

    def __init__(self, run: Run, tally: Tally):
        self.run, self.tally = run, tally
        self.writer = BackgroundWriter()
        self.nonfinite = NonFinite(run.recipe.skip_nonfinite, tally.skipped_nonfinite)
        self.started = time.perf_counter() - tally.seconds
        self.stop = StopRequest()
        self._exits = contextlib.ExitStack()
        self._stage = contextlib.ExitStack()  # the entered stage's feed
        self._entered = -1
        self._feed: Feed | None = None
        self.trainable = 0  # parameters the stage in force trains
        self.guard = StageGuard()
        self.replacing = (run.run_dir / rundir.REPLACED).is_dir()  # an --overwrite's old run
        hook = run.hook.tlplug_step_end
        self._on_step = (lambda step: hook(run=run, step=step)) if hook.get_hookimpls() else None

    def __enter__(self) -> Sitting:
        run, exits = self.run, self._exits
        try:
            exits.enter_context(self.stop)
            if not run.world.main:  # rank 0 alone writes in the run directory
                run.scratch = Path(exits.enter_context(tempfile.TemporaryDirectory()))
            failures = run.run_dir / DECODE_FAILURES if run.world.main else None
            for loader in run.loaders.all():
                loader.dataset.failures = failures
            if run.resolved.decoded_images["kept"]:
                for cache in keep_decoded(run.loaders.all(), run.scratch_dir):
                    exits.callback(cache.remove)
            exits.enter_context(_written(self.writer))
            exits.enter_context(self._stage)
        except BaseException:
            exits.close()
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._exits.__exit__(kind, error, traceback)
        if isinstance(error, BaseException):
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                self.run.hook.tlplug_run_error(run=self.run, reason=_reason(error), error=error)

    def enter_stage(self, epoch: int) -> Feed:
        """Make ``epoch`` the current epoch and its stage the one in force; return what the
        stage's steps are fed."""
        run = self.run
        run.epoch = epoch
        index = stage_at(run.plan, epoch - 1)
        if index == self._entered:
            return self._feed
        self._stage.close()
        stage = run.plan[index]
        fresh = index != run.stage  # not the stage a resumed run continues in
        run.stage = index
        self.trainable = apply_stage(run.model, stage)
        # Checkpoints share one copy of what the stage keeps frozen: no step writes it.
        self.writer.hold_still(p for p in run.model.parameters() if not p.requires_grad)
        handed = hand_over(run, index) if fresh and index else None
        if fresh or run.lr_scheduler.scale != stage.lr_scale:  # a resumed stage has its own
            earlier = run.plan[index - 1].training if index else ()
            warm = [g for g in stage.training if g not in earlier]
            steps = round(stage.warmup * run.resolved.steps_per_epoch)
            run.lr_scheduler.set_scale(stage.lr_scale, warm, steps)
        if run.ema is not None:  # a head fit again is its own average
            run.ema.follow(run.model, start=bool(handed and "probe" in handed))
        lrs = stage_lrs(run.optimizer, run.model.group_names(), stage)
        run.source, cut = choose_source(run, stage)
        run.hook.tlplug_stage_start(run=run, stage=stage)
        self._feed = self._stage.enter_context(feeding(run, run.source, cut))
        if fresh:  # the stage's first epoch records its start
            self._feed.starting = {"stage_start": True, "stage_lr": lrs}
            if handed:
                self._feed.starting["handover"] = handed
            if self._feed.features is None:  # a probe fit outright has no LR to cut
                self.guard.arm(run)
        self._entered = index
        return self._feed

    def run_epoch(self, feed: Feed) -> EpochResult:
        """Train and validate the current epoch; a stage's first epoch that explodes is
        rolled back and trained again (:mod:`tlplug.train.rollback`)."""
        run = self.run
        skipped = self.nonfinite.skipped
        try:
            result = run_epoch(run, feed, self.stop, self.nonfinite, self._on_step)
        except Diverged as exc:
            why = self.guard.exploded(None, len(run.classes))
            if why is None:
                raise Diverged(f"{exc}. {self.kept()}") from None
            return self._again(feed, why, skipped)
        if not result.train.complete:
            again = (
                f"continue with: tlplug run --resume {run.run_dir}"
                if self.tally.best_epoch or run.epoch > 1
                else "run the same command again to start over"
            )
            raise Interrupted(
                f"stopped by {self.stop.requested} during epoch {run.epoch}. {self.kept()}; "
                f"{again}",
                128 + self.stop.signum,
            )
        loss = compared_loss(result.train.loss, result.train.labels_loss)
        why = self.guard.exploded(loss, len(run.classes))
        if why is not None:
            return self._again(feed, why, skipped)
        self.guard.disarm()
        return result

    def _again(self, feed: Feed, why: str, skipped: int) -> EpochResult:
        """Roll the stage back to its start and train its first epoch again."""
        feed.starting["rolled_back"] = self.guard.roll_back(self.run, why)
        self.nonfinite.skipped = skipped
        return self.run_epoch(feed)

    def end_epoch(self, record: dict[str, Any], result: EpochResult) -> bool:
        """Take the epoch's result into the tally, let the plugins see its record, then
        queue the best weights and the resume state; return whether to go on (False once
        ``--patience`` validations went by without a better one)."""
        run, tally, recipe = self.run, self.tally, self.run.recipe
        val, source = result.best_of_epoch()
        if val is not None:
            best = tally.offer(run.epoch, val, source)
        else:  # without validation, the last epoch's weights are the ones kept
            best = not len(run.loaders.val)
            tally.best_epoch = run.epoch if best else tally.best_epoch
        tally.stopped_early = bool(recipe.patience) and tally.stale >= recipe.patience
        record["is_best"], record["best_source"] = best, source if best else None
        record["stopped_early"] = tally.stopped_early
        run.hook.tlplug_epoch_end(run=run, record=record)
        run.history.append(record)
        tally.seconds = time.perf_counter() - self.started
        tally.skipped_nonfinite = self.nonfinite.skipped
        if not run.world.main:  # rank 0 keeps the weights and the resume state
            return not tally.stopped_early
        with self.writer.together():
            if best:
                with run.ema.swapped_in(run.model) if source == "ema" else nullcontext():
                    save_weights(
                        run.model,
                        run.run_dir / rundir.WEIGHTS,
                        run.config,
                        self.writer,
                        run.adapter,
                    )
            checkpoint.save_resume(run.run_dir / checkpoint.RESUME, run, tally, self.writer)
        if self.replacing:  # the run kept an epoch: the run it replaces can go
            self.writer.wait()
            rundir.keep_replacement(run.run_dir)
            self.replacing = False
        return not tally.stopped_early

    def kept(self) -> str:
        """What of the run is safe on disk, for the message of an error that ends it."""
        run, tally = self.run, self.tally
        if not tally.best_epoch:
            return "No epoch finished, so nothing was kept"
        return (
            f"The best weights so far (epoch {tally.best_epoch}) are kept in "
            f"{run.run_dir / rundir.WEIGHTS}, the state after epoch {run.epoch - 1} in "
            f"{run.run_dir / checkpoint.RESUME}"
        )


def _reason(error: BaseException) -> str:
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        return "interrupted"
    if isinstance(error, Diverged):
        return "diverged"
    if isinstance(error, (OutOfMemory, MemoryError)):
        return "out-of-memory"
    return "error"


@contextlib.contextmanager
def _written(writer: BackgroundWriter):
    """Wait for the background writes when the block ends, so what is kept is on disk; a
    write error outranks a success but not the error that ended the block."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            writer.wait()
        raise
    writer.wait()
