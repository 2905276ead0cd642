"""Commands that use a finished run: ``predict``, ``eval``, ``explain``, ``export``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from tlplug.cli.group import cli, current_host
from tlplug.errors import TlplugError
from tlplug.plugins.kinds import KINDS
from tlplug.plugins.options import parse_assignments

EXPORTERS = KINDS["exporters"]
SKIPS_SHOWN = 10  # unreadable files named on stderr one by one; more are counted
WORST_MAPS = "pip install 'tlplug[explain]' adds each mistake's Grad-CAM map to the worst images"
TTA_HELP = "Average the softmax over flipped and cropped views of each image (7 passes)."


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
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="Print CSV: source,class1,prob1,... a row per classified image.",
)
@click.option("--tta", is_flag=True, help=TTA_HELP)
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
def predict(run_dir, images, topk, as_json, as_csv, tta, device) -> None:
    """Classify images with the best model of a run.

    IMAGES are files or folders; RUN_DIR is a run directory. A file that cannot be read or
    does not exist is skipped: named on stderr, and in --json listed with its "error" and
    no classes. The exit status is 0 when at least one image was classified."""
    from tlplug.compute.device import pick_device
    from tlplug.ship.predict import CHECK, expand_images, load_classifier

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    files = expand_images(images)  # a path that does not exist is skipped as unreadable
    pick_device(device)  # an unavailable device, said in the command's words
    classifier = load_classifier(run_dir, current_host(), device)
    predictions = classifier.predict(files, topk=topk, tta=tta, skip_unreadable=True)
    failed = [p.error for p in predictions if not p.ok]
    if len(failed) == 1 == len(predictions):
        raise TlplugError(f"{failed[0]}{CHECK}")
    if len(failed) == len(predictions):
        raise TlplugError(
            f"none of the {len(failed)} images could be read: {failed[0]}, and "
            f"{len(failed) - 1} more; check the files"
        )
    for error in failed[:SKIPS_SHOWN]:
        click.echo(f"skipped: {error}", err=True)
    if len(failed) > SKIPS_SHOWN:
        click.echo(f"skipped {len(failed) - SKIPS_SHOWN} more unreadable file(s)", err=True)
    if as_json:
        click.echo(json.dumps([p.to_json() for p in predictions], indent=2))
        return
    if as_csv:
        k = min(topk, len(classifier.classes))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(
            ["source", *(f"{x}{i}" for i in range(1, k + 1) for x in ("class", "prob"))]
        )
        for p in predictions:
            if p.ok:
                writer.writerow([p.source, *(v for c, prob in p.top for v in (c, f"{prob:.6f}"))])
        click.echo(text.getvalue(), nl=False)
        return
    for p in predictions:
        if p.ok:
            top = "  ".join(f"{name} {prob:.3f}" for name, prob in p.top)
            click.echo(f"{p.source}: {top}")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of a table.")
@click.option("--tta", is_flag=True, help=TTA_HELP)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Images per batch. [default: the run's]"
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for eval.json and the figures. [default: RUN_DIR/eval]",
)
@click.option("--device", help="auto, cpu or cuda. [default: the run's, if here, else cpu]")
@click.option(
    "--calibrate",
    is_flag=True,
    help="Fit the temperature on these images and keep it in the run (predict, eval and "
    "export then use it). [default: the run's, fitted on its validation images]",
)
def eval_command(run_dir, data, as_json, tta, batch_size, out, device, calibrate) -> None:
    """Measure the best model of a run on its validation split or on DATA.

    Reports accuracy, per-class precision/recall/F1, top-k accuracy, calibration (ECE,
    15 bins, and NLL, before and after the run's temperature; a reliability diagram), the
    confusion matrix and the most confident mistakes.

    Without DATA, on the run's own validation split, exactly as training validated (so the
    accuracy is the run's best_val_acc). DATA is anything --data takes with the run's
    classes: its validation split where it has one of its own (DIR/train/ + DIR/val/, a
    manifest with val rows), else all its images. eval.json, confusion_matrix.png,
    reliability.png and worst_images.png go to --out; eval replaces only those files, and
    only its own."""
    from tlplug.compute.device import pick_device
    from tlplug.ship.evaluate import evaluate_run
    from tlplug.ship.explain import available as explain_available

    if device is not None:
        pick_device(device)
    report = evaluate_run(
        run_dir,
        data,
        tta=tta,
        batch_size=batch_size,
        out=out,
        device=device,
        plugins=current_host(),
        calibrate=calibrate,
    )
    if report.train_overlap:
        click.echo(f"warning: {overlap_line(report)}", err=True)
    if "worst_images" in report.files and not explain_available():
        click.echo(f"note: {WORST_MAPS}", err=True)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else eval_table(report))


def overlap_line(report) -> str:
    """The warning for an evaluation that includes images the run trained on."""
    return (
        f"{report.train_overlap} of the {report.num_images} images evaluated are images the "
        f"run trained on ({report.run_dir / 'train_images.csv'}): this accuracy is not "
        "measured on held-out images"
    )


def eval_table(report) -> str:
    """The console summary of an :class:`~tlplug.ship.evaluate.EvalReport`: the headline
    figures, then precision, recall, F1 and support per class."""
    s = report.settings
    how = f"{s['precision']}{', channels-last' if s['channels_last'] else ''}"
    lines = [
        f"{report.run_dir} on {report.data} [{report.split}]: {report.num_images} images, "
        f"{how}, batch size {s['batch_size']}{', TTA' if s['tta'] else ''}"
    ]
    head = f"accuracy {report.accuracy:.4f}"
    if report.best_val_acc is not None:
        head += f" (the run's best_val_acc {report.best_val_acc:.4f})"
    tops = "".join(f"  top-{k} {v:.4f}" for k, v in report.top_k.items() if k > 1)
    lines.append(f"{head}{tops}  ECE {report.ece:.4f}  loss {report.loss:.4f}")
    c = report.calibration
    if c is not None:
        how = "fitted on these images, kept in the run" if c["fitted"] else "the run's"
        lines.append(
            f"calibration: temperature {c['temperature']:.3f} ({how}); ECE "
            f"{c['ece_before']:.4f} -> {c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> "
            f"{c['nll_after']:.4f}"
        )
    width = max(5, *map(len, report.classes))
    lines.append(f"{'class':<{width}}  precision  recall  f1     support")
    for name, m in report.per_class.items():
        lines.append(
            f"{name:<{width}}  {m['precision']:<9.3f}  {m['recall']:<6.3f}  "
            f"{m['f1']:<5.3f}  {m['support']}"
        )
    if report.skipped:
        lines.append(f"{len(report.skipped)} unreadable file(s) left out (listed in eval.json)")
    if report.files:
        lines.append("wrote " + ", ".join(report.files.values()))
    return "\n".join(lines)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the overlay PNGs and explain.json.",
)
@click.option(
    "--class",
    "classes",
    multiple=True,
    metavar="NAME",
    help="Also explain this class (repeatable); the predicted class is always explained.",
)
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
def explain(run_dir, images, out, classes, device) -> None:
    """Show where in each image the best model of a run found its evidence.

    For each image (IMAGES are files or folders) writes to --out a Grad-CAM map of the
    predicted class (and of each --class) over the image as the model saw it, and
    explain.json: per image the predicted class, its probability and the files. Needs
    the explain extra: pip install 'tlplug[explain]'."""
    from tlplug.compute.device import pick_device
    from tlplug.ship.explain import explain_run

    pick_device(device)
    results = explain_run(run_dir, images, out, classes, plugins=current_host(), device=device)
    for r in results:
        files = ", ".join(Path(m["file"]).name for m in r.maps.values())
        click.echo(f"{r.source}: {r.predicted} {r.prob:.3f} -> {files}")
    click.echo(f"wrote the maps of {len(results)} image(s) and {out / 'explain.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(EXPORTERS.flag, "format_name", required=True, help=EXPORTERS.help)
@click.option(
    EXPORTERS.options_flag,
    "format_opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the export format (repeatable); see 'tlplug list exporters'.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="File to write. [default: RUN_DIR/model.<the format's suffix>]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export(run_dir, format_name, format_opt, out, overwrite) -> None:
    """Export the best model of a run to another format.

    The exported file is run on sample images and checked against the PyTorch model."""
    from tlplug.ship.export import export_run

    options = parse_assignments(format_opt, EXPORTERS.options_flag)
    exported = export_run(
        run_dir, format_name, options, out, overwrite=overwrite, plugins=current_host()
    )
    click.echo(exported.line())
