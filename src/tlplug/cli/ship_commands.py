"""Commands that use a finished run: ``predict``, ``export``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tlplug.cli.group import cli, current_host
from tlplug.errors import TlplugError
from tlplug.kinds import KINDS
from tlplug.options import parse_assignments

EXPORTERS = KINDS["exporters"]


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Classes to show per image.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
def predict(run_dir, images, topk, as_json, device) -> None:
    """Classify images with the best model of a run.

    IMAGES are files or folders; RUN_DIR is a run directory."""
    from tlplug.data.folders import list_images
    from tlplug.predict import load_classifier

    files: list[Path] = []
    for path in images:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise TlplugError(f"folder {path} holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TlplugError(f"image {path} does not exist")
    classifier = load_classifier(run_dir, current_host(), device)
    predictions = classifier.predict(files, topk=topk)
    if as_json:
        click.echo(json.dumps([p.to_json() for p in predictions], indent=2))
        return
    for p in predictions:
        top = "  ".join(f"{name} {prob:.3f}" for name, prob in p.top)
        click.echo(f"{p.source}: {top}")


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
