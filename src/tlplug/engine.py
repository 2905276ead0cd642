"""The engine: a recipe bound to a set of plugins; it trains runs and loads them back.

Resolving names happens here, so a bad recipe fails before any data is read; assembling a
run is :mod:`tlplug.assemble`, training it :mod:`tlplug.loop`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import attrs

from tlplug import rundir
from tlplug.assemble import assemble
from tlplug.backbone import DataConfig
from tlplug.build import resolve, resolved_recipe
from tlplug.console import Console
from tlplug.data.pipeline import build_pipeline
from tlplug.data.sources import write_val_list
from tlplug.loop import FitResult, train
from tlplug.plugins import PluginHost
from tlplug.predict import load_classifier
from tlplug.recipe import Recipe
from tlplug.resume import resumed_run
from tlplug.runconfig import read_saved_run
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
        command: list[str] | None = None,
    ) -> FitResult:
        """Train on ``data`` (a folder; None for the synthetic set) and write a run directory;
        ``command``, the command line that started the run, is recorded in config.json."""
        recipe = attrs.evolve(self.recipe, epochs=epochs) if epochs is not None else self.recipe
        recipe.check()
        out_dir = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
        rundir.check_run_dir(out_dir, overwrite)
        run = assemble(self.plugins, self.parts, recipe, data, out_dir, Console(quiet))
        rundir.claim_run_dir(out_dir, overwrite)
        if command:
            run.config["command"] = shlex.join(command)
        run.hook.tlplug_run_start(run=run)
        rundir.write_json(out_dir / rundir.CONFIG, run.config)
        write_val_list(out_dir / rundir.VAL_LIST, run.data.val, run.classes)
        return train(run, Tally())

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike,
        *plugins: Any,
        entrypoints: bool = True,
        quiet: bool = False,
        host: PluginHost | None = None,
        epochs: int | None = None,
    ) -> FitResult:
        """Continue the run in ``run_dir`` after its last finished epoch; with ``epochs``,
        past its last epoch up to epoch ``epochs``, the schedule and LR schedule made for the
        new length. With ``host``, with the plugins it loaded (``plugins`` and
        ``entrypoints`` unused)."""
        host = host or PluginHost(plugins, entrypoints=entrypoints)
        saved = read_saved_run(Path(run_dir), host.recipe_type)
        run, tally = resumed_run(cls, host, saved, epochs, quiet)
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
