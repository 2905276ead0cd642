"""The engine: a recipe bound to a set of plugins; it trains runs and loads them back.

Resolving names happens here, so a bad recipe fails before any data is read; assembling a
run is :mod:`tlplug.train.assemble`, training it :mod:`tlplug.train.loop`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from tlplug.console import Console
from tlplug.errors import OptionError, TlplugError
from tlplug.plugins.host import PluginHost
from tlplug.recipe import AUTO, Recipe
from tlplug.rundir import layout as rundir
from tlplug.rundir.config_record import read_saved_run
from tlplug.rundir.resume import resumed_run
from tlplug.search.driver import search_and_fit
from tlplug.search.lr_curve import END_LR, START_LR, STEPS, RangeTest, save_range_test
from tlplug.search.lr_find import check_sweep, range_test
from tlplug.ship.predict import load_classifier
from tlplug.train.assemble import assemble
from tlplug.train.fit import fit_run, prepare
from tlplug.train.loop import FitResult, train
from tlplug.train.norm_stats import estimate_batchnorm

__all__ = ["Engine", "FitResult"]


class Engine:
    """A recipe bound to a set of plugins; trains runs and loads them back."""

    def __init__(self, plugins: PluginHost, recipe: Recipe):
        self.plugins = plugins
        # Options typed as the strategies declare them, defaults included: config.json is
        # exact, and a run reloads the same way after a plugin changes a default.
        self.parts, self.recipe = prepare(plugins, recipe)

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
        if recipe.schedule == AUTO:  # search with the default budget, then train the winner
            return search_and_fit(
                self.plugins,
                recipe,
                data,
                out=out,
                overwrite=overwrite,
                quiet=quiet,
                command=command,
            )
        out_dir = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
        return fit_run(
            self.plugins,
            self.parts,
            recipe,
            data,
            out_dir,
            overwrite=overwrite,
            quiet=quiet,
            command=command,
        )

    def lr_find(
        self,
        data: str | os.PathLike | None = None,
        *,
        out: str | os.PathLike | None = None,
        stage: int | None = None,
        start_lr: float = START_LR,
        end_lr: float = END_LR,
        steps: int = STEPS,
        quiet: bool = False,
    ) -> RangeTest:
        """Run the LR range test (:mod:`tlplug.search.lr_find`) of this recipe on ``data``: stage
        ``stage`` (from 1; None: the first whose LR matters), the base LR from ``start_lr``
        to ``end_lr`` over ``steps`` steps; write lr_find.png and lr_find.json into ``out``
        (default ``runs/<time>-lr-find-<backbone>``). Nothing is trained."""
        self.recipe.check()
        check_sweep(start_lr, end_lr, steps)
        if self.recipe.schedule == AUTO:
            raise OptionError("--schedule auto searches the schedules; lr-find tests one")
        backbone = self.recipe.backbone
        out_dir = Path(out) if out is not None else rundir.default_run_dir(f"lr-find-{backbone}")
        if out_dir.exists() and not out_dir.is_dir():
            raise TlplugError(f"--out {out_dir} is a file; choose a directory")
        run = assemble(self.plugins, self.parts, self.recipe, data, out_dir, Console(quiet))
        out_dir.mkdir(parents=True, exist_ok=True)
        estimate_batchnorm(run)
        tested = range_test(run, stage=stage, start_lr=start_lr, end_lr=end_lr, steps=steps)
        for problem in save_range_test(tested, out_dir):
            run.console.say(f"warning: {problem}")
        return attrs.evolve(tested, folder=str(out_dir))

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
        run, tally = resumed_run(host, saved, epochs, quiet)
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
