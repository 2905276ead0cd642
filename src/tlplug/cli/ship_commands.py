"""Commands that take a finished run further: ``export``."""

from __future__ import annotations

from pathlib import Path

import click

from tlplug.cli.group import cli, current_host
from tlplug.kinds import KINDS
from tlplug.options import parse_assignments

EXPORTERS = KINDS["exporters"]


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(EXPORTERS.flag, "format_name", required=True, help=EXPORTERS.help)
@click.option(
    EXPORTERS.options_flag, "format_opt", multiple=True, metavar="KEY=VALUE",
    help="Option of the export format (repeatable); see 'tlplug list exporters'.",
)  # fmt: skip
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="File to write. [default: RUN_DIR/model.<the format's suffix>]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export(run_dir, format_name, format_opt, out, overwrite) -> None:
    """Export the best model of a run to another format.

    The exported file is run on sample images and checked against the PyTorch model."""
    from tlplug.export import export_run

    options = parse_assignments(format_opt, EXPORTERS.options_flag)
    exported = export_run(
        run_dir, format_name, options, out, overwrite=overwrite, plugins=current_host()
    )
    click.echo(exported.line())
