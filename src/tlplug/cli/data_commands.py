"""Commands about data: ``shard``."""

from __future__ import annotations

from pathlib import Path

import click

from tlplug.cli.group import cli, current_host
from tlplug.errors import DataError


@cli.command()
@click.argument("data")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Samples per shard.",
)
@click.option(
    "--val-split",
    type=click.FloatRange(0, 0.9),
    default=None,
    help="Hold out this fraction of the training images as val shards when DATA has no "
    "validation split. [default: 0.2]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a held-out split.")
@click.option("--data-opt", "data_opts", multiple=True, help="Option of DATA's source, KEY=VALUE.")
def shard(data, out, shard_size, val_split, seed, data_opts) -> None:
    """Write DATA (any source: a folder, a manifest, torchvision:..., hf:...) as tar shards
    in the WebDataset layout: OUT/train-00000.tar ..., val-*, test-*, and classes.txt.
    'tlplug run --data OUT' trains on them."""
    from tlplug.data.shards import write_shards
    from tlplug.plugins.resolve import load_data
    from tlplug.recipe import Recipe

    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; choose another --out")
    options = dict(item.partition("=")[::2] for item in data_opts)
    recipe = Recipe(seed=seed, val_split=val_split, data_opts=options)
    splits = load_data(current_host(), data, recipe)
    written = write_shards(splits, out, shard_size)
    counts = ", ".join(f"{part} {count}" for part, count in written.items())
    click.echo(f"wrote {counts} shard(s) of up to {shard_size} samples to {out}")
