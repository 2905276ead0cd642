"""One run from a recipe, start to end: the single path ``Engine.fit``, each search
candidate and the search's winner take. Nothing above it (the engine, the search driver) is
passed down into it."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import attrs

from tlplug.console import Console
from tlplug.data.pipeline import build_pipeline
from tlplug.data.sources import write_image_list
from tlplug.errors import OptionError
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import Parts, resolve, resolved_recipe
from tlplug.recipe import AUTO, Recipe
from tlplug.rundir import layout as rundir
from tlplug.rundir.config_record import config_json
from tlplug.search.lr_curve import save_range_test
from tlplug.search.lr_find import tune_lr
from tlplug.train.assemble import assemble
from tlplug.train.best_so_far import Tally
from tlplug.train.loop import FitResult, train
from tlplug.train.norm_stats import estimate_batchnorm


def prepare(plugins: PluginHost, recipe: Recipe) -> tuple[Parts, Recipe]:
    """Resolve every name of ``recipe`` to a strategy and check every option, before any
    data is read; return the parts and the recipe with the options as resolved (defaults
    included) and the teacher's path made absolute, which config.json records.
    ``--schedule auto`` leaves the schedule open."""
    auto = recipe.schedule == AUTO
    if auto and recipe.schedule_opts:
        raise OptionError("--schedule auto searches the schedules; drop --schedule-opt")
    parts = resolve(plugins, attrs.evolve(recipe, schedule=None) if auto else recipe)
    resolved = resolved_recipe(recipe, parts, plugins.kinds)
    if resolved.teacher is not None:  # resumed or searched from any working directory
        resolved = attrs.evolve(resolved, teacher=str(Path(resolved.teacher).resolve()))
    build_pipeline(parts["augmentations"], DataConfig(), recipe.img_size or 32)  # checks options
    return parts, resolved


def fit_recipe(
    plugins: PluginHost,
    recipe: Recipe,
    data: str | os.PathLike | None,
    out: Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    command: list[str] | None = None,
) -> FitResult:
    """:func:`prepare` ``recipe``, then :func:`fit_run` it."""
    parts, resolved = prepare(plugins, recipe)
    resolved.check()
    return fit_run(
        plugins, parts, resolved, data, out, overwrite=overwrite, quiet=quiet, command=command
    )


def fit_run(
    plugins: PluginHost,
    parts: Parts,
    recipe: Recipe,
    data: str | os.PathLike | None,
    out: Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    command: list[str] | None = None,
) -> FitResult:
    """Assemble the run of a prepared recipe, claim ``out`` (an earlier run there is put
    back if this one fails before its first kept epoch), write what it starts from and
    train it."""
    rundir.check_run_dir(out, overwrite)
    run = assemble(plugins, parts, recipe, data, out, Console(quiet))
    main = run.world.main  # in a data-parallel run, rank 0 alone writes the run directory
    if recipe.lr == AUTO and run.world.parallel:
        raise OptionError("--lr auto runs its range test in one process; give --lr")
    if main:
        rundir.claim_run_dir(out, overwrite)
    try:
        estimate_batchnorm(run)
        tested = tune_lr(run) if recipe.lr == AUTO else None  # the range test chooses
        run.config = config_json(recipe, run.resolved, command and shlex.join(command))
        run.hook.tlplug_run_start(run=run)
        if main:
            rundir.write_json(out / rundir.CONFIG, run.config)
            for problem in save_range_test(tested, out) if tested else ():
                run.console.say(f"warning: {problem}")
            write_image_list(out / rundir.VAL_LIST, run.data.val, run.classes)
            write_image_list(out / rundir.TRAIN_LIST, run.data.train, run.classes)
        return train(run, Tally())
    except BaseException:  # before its first epoch was kept: the replaced run comes back
        if main:
            rundir.restore_replaced(out)
        raise
