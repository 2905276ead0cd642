"""``tlplug search``: successive halving over freeze schedules and learning rates, then the
winner trained in full (``tlplug run --schedule auto`` is the one-line form)."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from tlplug.cli.flags import data_and_config, recipe_and_data, recipe_options
from tlplug.cli.group import cli, current_host
from tlplug.cli.run_commands import RUN_KINDS
from tlplug.recipe import Settings
from tlplug.search.halving import BUDGET_HELP

SEARCH_KINDS = [kind for kind in RUN_KINDS if kind.key != "schedules"]


@cli.command()
@data_and_config(
    "Recipe file (TOML, YAML or JSON, or a run's config.json) the search starts from; "
    "options given here override it. Its schedule is searched, not used."
)
@click.option(
    "--budget",
    default="auto",
    show_default=True,
    help=f"What the search may spend, in {BUDGET_HELP}; a full run is --epochs epochs on "
    "all the training images. auto: 3x a fold. The winner's final run comes on top.",
)
@click.option(
    "--folds",
    default="auto",
    show_default=True,
    metavar="N|auto",
    help="Score candidates on N folds of the training images, each holding out a different "
    "fifth (5: cross-validation, every image scored once). auto: 5 when a fifth is under "
    "40 images, else 1.",
)
@click.option(
    "--schedules",
    metavar="NAME,NAME,...",
    help="Schedules to try. [default: every registered one that runs without options]",
)
@click.option(
    "--eta",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Each rung keeps the best 1/ETA of its candidates for a rung about ETA times longer.",
)
@recipe_options(SEARCH_KINDS, [f.name for f in attrs.fields(Settings)])
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory of the winner's run, with the leaderboard. "
    "[default: runs/<time>-<backbone>]",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing while searching and training.")
def search(
    data, config_file, budget, folds, schedules, eta, out, overwrite, quiet, **options
) -> None:
    """Search freeze schedules, learning rates and LR decay, then train the winner.

    Candidates train on the training images with a fifth of them held out to score them
    (the validation images never choose; on few images, once per fold of a 5-fold
    cross-validation): the leading schedules for the full --epochs,
    the other candidates by successive halving (short runs, the best third longer) as
    the budget allows. The winner then trains on DATA as 'tlplug run' would. Writes
    leaderboard.json and leaderboard.csv into the run directory; its config.json repeats
    the winner."""
    from tlplug.engine import Engine
    from tlplug.search.driver import search_and_fit
    from tlplug.search.halving import parse_budget
    from tlplug.search.holdout import choose_folds

    parse_budget(budget)  # a bad budget or --folds fails before plugins or data load
    choose_folds(folds, 0)
    host = current_host()
    recipe, data = recipe_and_data(
        options, host, data, config_file, ignore=("schedule", "schedule_opts")
    )
    engine = Engine(host, host.recipe_type.from_kwargs(**recipe, schedule="auto"))
    names = [n.strip() for n in schedules.split(",") if n.strip()] if schedules else None
    command = click.get_current_context().find_root().obj["command"]
    search_and_fit(
        host,
        engine.recipe,
        data,
        budget=budget,
        folds=folds,
        eta=eta,
        schedules=names,
        out=out,
        overwrite=overwrite,
        quiet=quiet,
        command=command,
    )


search.kinds_of = "run"  # a plugin's kind of strategy adds its options here as on 'tlplug run'
