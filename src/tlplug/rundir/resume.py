"""Continuing a run: after an interruption, from its resume state; or past its last epoch
(``--resume RUN --epochs N``), with the schedule and the LR schedule made for the new length.

A run extended with its resume state (an unfinished run, or one kept with ``--keep-state``)
continues exactly: last weights, optimizer state, RNG. A finished run keeps no resume state,
so it continues from its best weights with a fresh optimizer, the way fastai's ``fine_tune``
continues a learner. Either way the LR schedule is rebuilt for N epochs and advanced to the
step the run has reached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

from tlplug.console import Console
from tlplug.errors import COMMAND_LINE, TlplugError, UnknownNameError
from tlplug.recipe import AUTO
from tlplug.run import Run
from tlplug.rundir import checkpoint
from tlplug.rundir import layout as rundir
from tlplug.rundir.config_record import SavedRun, check_same_run
from tlplug.rundir.weights import load_state, read_state_dict
from tlplug.train.assemble import assemble
from tlplug.train.best_so_far import Tally
from tlplug.train.fit import prepare


def resumed_run(host: Any, saved: SavedRun, epochs: int | None, quiet: bool) -> tuple[Run, Tally]:
    """The run of ``saved`` assembled again and brought to where it stopped (its epochs
    extended to ``epochs`` when given), with its tally."""
    run_dir = saved.path
    state_file = run_dir / checkpoint.RESUME
    finished = (run_dir / rundir.SUMMARY).is_file()
    state = None
    if state_file.is_file() or not (epochs or finished):
        state = checkpoint.read_resume(state_file)
    done = state.epoch if state else _epochs_done(run_dir)
    if epochs is None:
        stopped = Tally.from_json(state.meta["best"]).stopped_early if state else False
        if finished or stopped or state.epoch >= saved.recipe.epochs:
            why = "stopped early (--patience)" if stopped else f"already finished all {done} epochs"
            raise TlplugError(
                f"{run_dir} {why}; --resume {run_dir} --epochs N continues it to epoch N"
            )
    elif epochs <= done:
        raise TlplugError(f"--epochs {epochs} is not more than the {done} epochs {run_dir} ran")
    # The batch size --auto-batch-size found is part of the run: the schedule counts steps.
    recipe = attrs.evolve(
        saved.recipe,
        epochs=epochs or saved.recipe.epochs,
        batch_size=saved.batch_size,
        auto_batch_size=False,
    )
    if recipe.lr == AUTO:  # config.json keeps the LR the range test chose
        raise TlplugError(f"{run_dir / rundir.CONFIG} says lr auto but not the LR it chose")
    try:
        parts, recipe = prepare(host, recipe)
    except UnknownNameError as exc:
        raise TlplugError(f"cannot resume {run_dir}: {exc}; {_missing(host, saved)}") from None
    run = assemble(host, parts, recipe, saved.data_spec, run_dir, Console(quiet))
    check_same_run(run.resolved, saved.resolved, run_dir, plan=epochs is None)
    run.config = saved.config
    tally = checkpoint.restore(run, state) if epochs is None else _extend(run, saved, state, done)
    if run.world.main:  # rank 0 writes the run directory
        run.history = rundir.truncate_metrics(run_dir / rundir.METRICS, run.epoch)
    else:
        run.history = rundir.read_metrics(run_dir / rundir.METRICS, run.epoch)
    return run, tally


def _missing(host: Any, saved: SavedRun) -> str:
    """Which plugins the run chose strategies of that are not loaded now, and how to get
    them back: installed, or passed again as the run passed them to the engine."""
    loaded = {info.name for info in host.all_infos() if info.status == "loaded"}
    gone = [name for name in saved.plugins_chosen() if name not in loaded]
    named = f"plugin(s) {', '.join(gone)}" if gone else "a plugin that is not loaded"
    if COMMAND_LINE.get():
        return f"it was trained with {named}: install it (see 'tlplug plugins')"
    return (
        f"it was trained with {named}: install it, or pass the module or object that "
        "Engine.from_plugins was given again, as Engine.resume(run_dir, plugin)"
    )


def _extend(run: Run, saved: SavedRun, state, done: int) -> Tally:
    """Bring ``run`` (assembled for its new length) to epoch ``done``."""
    if state is not None:
        tally = checkpoint.restore(run, state, schedule=False)
        how = "its last state"
    else:
        if run.adapter is not None:
            raise TlplugError(
                f"{saved.path} trained with an adapter and kept no resume state; only a run "
                "kept with --keep-state continues with an adapter"
            )
        load_state(run.model, read_state_dict(saved.path / rundir.WEIGHTS))
        tally = Tally.from_summary(rundir.read_json(saved.path / rundir.SUMMARY))
        run.epoch, run.step = done, done * run.resolved.steps_per_epoch
        how = f"its best weights (epoch {tally.best_epoch}) with a fresh optimizer"
    advance(run)
    config = run.config
    config["recipe"]["epochs"] = run.recipe.epochs
    config["resolved"]["plan"] = [stage.to_json() for stage in run.plan]
    config.setdefault("extended", []).append(
        {
            "after_epoch": done,
            "from_epochs": saved.recipe.epochs,
            "to_epochs": run.recipe.epochs,
            "from": how,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    if run.world.main:
        rundir.write_json(saved.path / rundir.CONFIG, config)
    return attrs.evolve(tally, stopped_early=False, stale=0)


def advance(run: Run) -> None:
    """Step the run's LR schedule, made for the whole new length, to the run's step."""
    for group in run.optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    run.stage = -1  # the plan is new: the stage in force is entered afresh
    run.lr_scheduler.skip(run.step)


def _epochs_done(run_dir: Path) -> int:
    summary = run_dir / rundir.SUMMARY
    if not summary.is_file():
        raise TlplugError(
            f"{run_dir} has neither a resume state nor a summary: it stopped before its first "
            "epoch ended; run the same command again to start over"
        )
    data = rundir.read_json(summary)
    return data.get("epochs_trained", data.get("epochs", 0))
