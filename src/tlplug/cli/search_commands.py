"""Choosing: ``tlplug search`` (successive halving over freeze schedules and learning
rates, then the winner trained in full; ``tlplug run --schedule auto`` is the one-line
form) and ``tlplug rank`` (backbones scored without fine-tuning)."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import click

from tlplug.cli.flags import data_and_config, recipe_and_data, recipe_from_cli, recipe_options
from tlplug.cli.group import cli, current_host
from tlplug.cli.run_commands import RUN_KINDS
from tlplug.errors import OptionError
from tlplug.plugins.kinds import KINDS
from tlplug.recipe import Settings
from tlplug.search.feature_store import ENV
from tlplug.search.feature_store import cache_dir as cache_dir_of
from tlplug.search.halving import BUDGET_HELP

SEARCH_KINDS = [kind for kind in RUN_KINDS if kind.key != "schedules"]


def candidate_options(command):
    """``--backbone`` (repeatable, patterns, ``@WEIGHTS``), ``--top``, ``--top-by``,
    ``--cache-dir`` and ``--no-cache``: which backbones a rank scores, and where their
    features are kept."""
    for option in reversed(
        [
            click.option(
                "--backbone",
                "backbones",
                multiple=True,
                metavar="NAME[@WEIGHTS]",
                help="A backbone (repeatable), e.g. timm:resnet50; a shell-style pattern as "
                "'tlplug list backbones' takes ('timm:*convnext*'); or one with a weights file "
                "of its own: timm:resnet50@weights.safetensors.",
            ),
            click.option(
                "--top",
                type=int,
                metavar="N",
                help="Rank only the N smallest of the backbones named (see --top-by); "
                "needed when a pattern matches many.",
            ),
            click.option(
                "--top-by",
                type=click.Choice(["params", "flops"]),
                default="params",
                show_default=True,
                help="What --top measures: parameters, or the FLOPs of one image's forward "
                "pass (the estimate of speed).",
            ),
            click.option(
                "--cache-dir",
                type=click.Path(path_type=Path),
                help=f"Where backbone features are kept for the next rank. [default: "
                f"${ENV}, else ~/.cache/tlplug/features]",
            ),
            click.option(
                "--no-cache", is_flag=True, help="Compute every backbone's features; keep none."
            ),
        ]
    ):
        command = option(command)
    return command


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
@candidate_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory of the winner's run, with the leaderboard. "
    "[default: runs/<time>-<backbone>]",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing while searching and training.")
def search(
    data,
    config_file,
    budget,
    folds,
    schedules,
    eta,
    backbones,
    top,
    top_by,
    cache_dir,
    no_cache,
    out,
    overwrite,
    quiet,
    **options,
) -> None:
    """Search freeze schedules, learning rates and LR decay, then train the winner.

    With several --backbone (or a pattern), they are ranked first as 'tlplug rank' ranks
    them (LogME on one forward pass each), and the best one is searched.

    Candidates train on the training images with a fifth of them held out to score them
    (the validation images never choose; on few images, once per fold of a 5-fold
    cross-validation): the leading schedules for the full --epochs,
    the other candidates by successive halving (short runs, the best third longer) as
    the budget allows. The winner then trains on DATA as 'tlplug run' would. Writes
    leaderboard.json and leaderboard.csv into the run directory; its config.json repeats
    the winner."""
    from tlplug.console import Console
    from tlplug.search.halving import parse_budget
    from tlplug.search.holdout import choose_folds
    from tlplug.search.rank import Candidate
    from tlplug.search.ranking_rung import rank_and_search
    from tlplug.search.shortlist import shortlist

    parse_budget(budget)  # a bad budget or --folds fails before plugins or data load
    choose_folds(folds, 0)
    host = current_host()
    recipe, data = recipe_and_data(
        options, host, data, config_file, ignore=("schedule", "schedule_opts")
    )
    recipe = host.recipe_type.from_kwargs(**recipe, schedule="auto")
    candidates = shortlist(host, list(backbones), recipe, Console(quiet), top, top_by)
    names = [n.strip() for n in schedules.split(",") if n.strip()] if schedules else None
    command = click.get_current_context().find_root().obj["command"]
    rank_and_search(
        host,
        recipe,
        data,
        candidates or [Candidate(recipe.backbone)],
        cache=None if no_cache else cache_dir_of(cache_dir),
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


@cli.command()
@click.option("--data", help="Data, as for 'tlplug run'. [default: the synthetic set]")
@candidate_options
@recipe_options(
    [KINDS["data-sources"]],
    ["pretrained", "val_split", "img_size", "batch_size", "device", "precision", "workers", "seed"],
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for rank.json and rank.png. [default: runs/<time>-rank]",
)
def rank(data, backbones, top, top_by, cache_dir, no_cache, out, **options) -> None:
    """Rank backbones for DATA without fine-tuning: one forward pass per image each (or
    their features kept from an earlier rank), then LogME (a transferability score, no
    training), the converged linear probe's accuracy (held-out fifth of the training
    images, and the validation images), parameters and images/s. Sorted by LogME; a
    higher LogME predicts a better fine-tune."""
    from tlplug.console import Console
    from tlplug.search.rank import rank_backbones, rank_table
    from tlplug.search.shortlist import shortlist

    if not backbones:
        raise OptionError("give at least one --backbone to rank")
    host = current_host()
    recipe = host.recipe_type.from_kwargs(**recipe_from_cli(options, [KINDS["data-sources"]]))
    console = Console()
    candidates = shortlist(host, list(backbones), recipe, console, top, top_by)
    out = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-rank"
    cache = None if no_cache else cache_dir_of(cache_dir)
    rows = rank_backbones(host, data, candidates, recipe, out, console, cache)
    for line in rank_table(rows):
        click.echo(line)
    click.echo(f"wrote {out / 'rank.json'}, {out / 'rank.png'}")
