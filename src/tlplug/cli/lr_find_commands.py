"""The command that tests learning rates: ``lr-find``."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from tlplug.cli.flags import data_and_config, recipe_and_data, recipe_options
from tlplug.cli.group import cli, current_host
from tlplug.cli.run_commands import RUN_KINDS
from tlplug.recipe import Settings
from tlplug.search.lr_curve import END_LR, START_LR, STEPS


@cli.command(name="lr-find")
@data_and_config("Recipe file, as for 'tlplug run'; options given here override it.")
@recipe_options(RUN_KINDS, [f.name for f in attrs.fields(Settings)])
@click.option(
    "--stage",
    type=click.IntRange(min=1),
    help="Stage of the freeze plan to test, from 1. [default: the first whose LR matters: "
    "after a head fit by L-BFGS (--probe converge), the next]",
)
@click.option(
    "--start-lr",
    type=float,
    default=START_LR,
    show_default=True,
    help="Learning rate of the first step.",
)
@click.option(
    "--end-lr",
    type=float,
    default=END_LR,
    show_default=True,
    help="Learning rate of the last step.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=2),
    default=STEPS,
    show_default=True,
    help="Optimizer steps; an epoch's batches repeat if it has fewer.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for lr_find.png and lr_find.json. [default: runs/<time>-lr-find-<backbone>]",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the suggestions.")
def lr_find(data, config_file, stage, start_lr, end_lr, steps, out, quiet, **options) -> None:
    """Suggest a learning rate: fastai's LR range test on the run's own recipe.

    Takes the options of 'tlplug run'. One stage trains for --steps optimizer steps while the
    base LR grows geometrically from --start-lr to --end-lr (each group keeps its --lr-mult
    or --lr-decay multiplier), stopping once the smoothed loss diverges; nothing is kept.
    Prints the suggestions (valley, the one to use; minimum/10; steepest) and writes the
    curve to lr_find.png and lr_find.json. 'tlplug run --lr auto' runs the same test first."""
    from tlplug.engine import Engine

    host = current_host()
    recipe, data = recipe_and_data(options, host, data, config_file)
    engine = Engine(host, host.recipe_type.from_kwargs(**recipe))
    tested = engine.lr_find(
        data, out=out, stage=stage, start_lr=start_lr, end_lr=end_lr, steps=steps, quiet=quiet
    )
    for line in tested.lines():
        click.echo(line)


lr_find.kinds_of = "run"  # a plugin's kind of strategy adds its options here as on 'tlplug run'
