"""The engine: a recipe bound to a set of plugins; it trains runs and loads them back.

Resolving names happens here, so a bad recipe fails before any data is read; assembling a
run is :mod:`tlplug.assemble`, training it :mod:`tlplug.loop`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from tlplug import checkpoint, rundir
from tlplug.assemble import assemble
from tlplug.backbone import DataConfig
from tlplug.build import resolve, resolved_recipe
from tlplug.console import Console
from tlplug.data.pipeline import build_pipeline
from tlplug.errors import TlplugError
from tlplug.loop import FitResult, train
from tlplug.plugins import PluginHost
from tlplug.predict import load_classifier
from tlplug.recipe import Recipe
from tlplug.runconfig import check_same_run, read_saved_run
from tlplug.tally import Tally

__all__ = ["Engine", "FitResult"]


class Engine:
    """A recipe bound to a set of plugins; trains runs and loads them back."""

    def __init__(self, plugins: PluginHost, recipe: Recipe):
        self.plugins = plugins
        self.parts = resolve(plugins, recipe)
        # Options typed as the strategies declare them, defaults included: config.json is
        # exact, and a run reloads the same way after a plugin changes a default.
        self.recipe = resolved_recipe(recipe, self.parts, plugins.kinds)
        # The augmentations' factories check their option values.
        build_pipeline(self.parts["augmentations"], DataConfig(), recipe.img_size or 32)

    @classmethod
    def from_plugins(cls, *plugins: Any, entrypoints: bool = True, **recipe: Any) -> Engine:
        """Build an engine from plugin objects or modules plus (unless turned off) every
        installed plugin; ``recipe`` keys mirror the CLI options (``backbone=``, ``lr=``...)."""
        host = PluginHost(plugins, entrypoints=entrypoints)
        return cls(host, host.recipe_type.from_kwargs(**recipe))

    def fit(
        self,
        data: str | os.PathLike | None = None,
        *,
        epochs: int | None = None,
        out: str | os.PathLike | None = None,
        overwrite: bool = False,
        quiet: bool = False,
    ) -> FitResult:
        """Train on ``data`` (a folder; None for the synthetic set) and write a run directory."""
        recipe = attrs.evolve(self.recipe, epochs=epochs) if epochs is not None else self.recipe
        recipe.check()
        out_dir = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
        rundir.check_run_dir(out_dir, overwrite)
        run = assemble(self.plugins, self.parts, recipe, data, out_dir, Console(quiet))
        rundir.claim_run_dir(out_dir, overwrite)
        run.hook.tlplug_run_start(run=run)
        rundir.write_json(out_dir / rundir.CONFIG, run.config)
        return train(run, Tally())

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike,
        *plugins: Any,
        entrypoints: bool = True,
        quiet: bool = False,
        host: PluginHost | None = None,
    ) -> FitResult:
        """Continue the interrupted run in ``run_dir`` after its last finished epoch; with
        ``host``, with the plugins it loaded (``plugins`` and ``entrypoints`` unused)."""
        run_dir = Path(run_dir)
        host = host or PluginHost(plugins, entrypoints=entrypoints)
        saved = read_saved_run(run_dir, host.recipe_type)
        state = checkpoint.read_resume(run_dir / checkpoint.RESUME)
        if state.epoch >= saved.recipe.epochs:
            raise TlplugError(f"{run_dir} already finished all {saved.recipe.epochs} epochs")
        # The batch size --auto-batch-size found is part of the run: the schedule counts steps.
        recipe = attrs.evolve(saved.recipe, batch_size=saved.batch_size, auto_batch_size=False)
        engine = cls(host, recipe)
        run = assemble(host, engine.parts, engine.recipe, saved.data_spec, run_dir, Console(quiet))
        check_same_run(run.config["resolved"], saved.resolved, run_dir)
        run.config = saved.config
        tally = checkpoint.restore(run, state)
        run.history = rundir.truncate_metrics(run_dir / rundir.METRICS, run.epoch)
        run.hook.tlplug_run_start(run=run)
        return train(run, tally)

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike,
        *plugins: Any,
        entrypoints: bool = True,
        device: str = "cpu",
    ):
        """Rebuild the best model of a run directory, ready to predict (a :class:`Classifier`)."""
        return load_classifier(Path(run_dir), PluginHost(plugins, entrypoints=entrypoints), device)
