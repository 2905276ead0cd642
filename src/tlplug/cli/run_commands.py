"""Commands that train: ``run``, ``resume``, ``augment-preview``."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import click

from tlplug.cli.flags import data_and_config, recipe_and_data, recipe_from_cli, recipe_options
from tlplug.cli.group import cli, current_host
from tlplug.errors import OptionError
from tlplug.plugins.kinds import KINDS
from tlplug.recipe import Settings

RUN_KINDS = [kind for kind in KINDS.values() if kind.command == "run"]

NPROC = click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train in N processes on this machine (data parallel; one per GPU), as 'torchrun "
    "--standalone --nproc_per_node N -m tlplug ...' would. --batch-size is the global "
    "batch. See docs/distributed.md, also for several machines.",
)


def _launched(nproc: int) -> bool:
    """With ``--nproc N`` above 1 outside torchrun, run this command again in N processes
    (without ``--nproc``) and return True once they are done."""
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return False
    from tlplug.compute.distributed import launch

    args = click.get_current_context().find_root().obj["command"][1:]
    launch(nproc, _without_nproc(args))
    return True


def _without_nproc(args: list[str]) -> list[str]:
    """``args`` with ``--nproc N`` (or ``--nproc=N``) left out."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


@cli.command()
@data_and_config(
    "Recipe file (TOML, YAML or JSON; a run's config.json repeats that run, data "
    "included); options given here override it."
)
@recipe_options(RUN_KINDS, [f.name for f in attrs.fields(Settings)])
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory. [default: runs/<time>-<backbone>]",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    metavar="RUN_DIR",
    help="Continue the run in RUN_DIR with its own recipe and data: after the epoch an "
    "interruption ended, or with --epochs N past its last epoch to epoch N.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing while training.")
@NPROC
def run(data, config_file, out, overwrite, resume, quiet, nproc, **options) -> None:
    """Fine-tune a backbone on DATA and write a run directory.

    Every option also has a recipe key of the same name in Python
    (``Engine.from_plugins(lr_schedule=...)``)."""
    from tlplug.engine import Engine

    if _launched(nproc):
        return
    host = current_host()
    if config_file is not None and resume is not None:
        raise OptionError("--resume uses the run's own config.json; drop --config")
    recipe, data = recipe_and_data(options, host, data, config_file)
    if resume is not None:
        epochs = recipe.pop("epochs", None)
        given = [f"--{k.replace('_', '-')}" for k in recipe] + [
            flag
            for flag, value in (("--data", data), ("--out", out), ("--overwrite", overwrite))
            if value
        ]
        if given:
            raise OptionError(
                f"--resume continues {resume} with the recipe and data in its config.json "
                f"(--epochs N to go on to epoch N); drop {', '.join(given)}"
            )
        Engine.resume(resume, quiet=quiet, host=host, epochs=epochs)
        return
    engine = Engine(host, host.recipe_type.from_kwargs(**recipe))
    command = click.get_current_context().find_root().obj["command"]
    engine.fit(data, out=out, overwrite=overwrite, quiet=quiet, command=command)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="Go on past the run's last epoch to epoch N, the schedule and LR schedule made "
    "for the new length. [default: finish the epochs the run had]",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing while training.")
@NPROC
def resume(run_dir, epochs, quiet, nproc) -> None:
    """Continue the run in RUN_DIR with its own recipe and data: after the epoch an
    interruption ended, or with --epochs N past its last epoch (the same as
    ``tlplug run --resume RUN_DIR``). It may continue in another number of processes
    than it started in."""
    from tlplug.engine import Engine

    if _launched(nproc):
        return
    Engine.resume(run_dir, quiet=quiet, host=current_host(), epochs=epochs)


@cli.command(name="augment-preview")
@click.option("--data", help="Training data, as for 'tlplug run'. [default: the synthetic set]")
@recipe_options(
    [KINDS["data-sources"], KINDS["augmentations"], KINDS["backbones"]],
    ["val_split", "img_size", "seed"],
)
@click.option(
    "--count", type=click.IntRange(min=1), default=16, show_default=True, help="Images in the grid."
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def augment_preview(data, out, count, overwrite, **options) -> None:
    """Write a PNG grid of augmented training images.

    The grid shows what the model will see: the first images of a run's first epoch,
    augmented as the run would augment them."""
    from tlplug.data.preview import write_preview
    from tlplug.engine import Engine

    host = current_host()
    kinds = [KINDS["data-sources"], KINDS["augmentations"], KINDS["backbones"]]
    recipe = recipe_from_cli(options, kinds)
    engine = Engine(host, host.recipe_type.from_kwargs(**recipe, pretrained=False))
    preview = write_preview(engine, out, data, count=count, overwrite=overwrite)
    click.echo(preview.summary())
    labels = preview.labels()
    for row in range(0, count, preview.columns):
        click.echo("  " + " | ".join(labels[row : row + preview.columns]))
