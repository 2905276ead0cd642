"""``tlplug eval``: a run's best model measured on its own validation split or on other data.

On the run's own split the pass is the validation pass of training, repeated: the best
weights, the split's images read again with the run's data spec, seed and val split, each
through the base transform to uint8 and normalized on the device, in batches of the run's
size, in its precision and memory layout. So its accuracy is the run's ``best_val_acc``,
to the bit.

Other data (``data``) must have the run's classes. Where it has a validation split of its
own (``DIR/train/`` + ``DIR/val/``, a CSV manifest with ``val`` rows, ``SOURCE:LOCATION``)
that split is evaluated, else all its images (``DIR/<class>/``; ``DIR/train/`` [+ ``test/``]
alone; a manifest without ``val`` rows). Files that do not open as images are left out.

The report (:class:`EvalReport`) goes to ``out`` (default ``RUN/eval/``) as eval.json,
confusion_matrix.png and worst_images.png (the most confident mistakes, each beside its
Grad-CAM map for the class it was taken for when the ``explain`` extra is installed). Those
three are the only files eval writes, and it replaces them only beside an eval.json of its
own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.data.folders import FileImages, scan_classes
from tlplug.data.loaders import TransformedImages, default_workers, make_loader
from tlplug.data.sources import ImageList, listed_images, split_data_spec
from tlplug.data.transforms import base_transform
from tlplug.errors import DataError, TlplugError
from tlplug.plotting import (
    draw_confusion,
    draw_reliability,
    labelled_grid,
    save_image,
    save_png,
)
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.rundir import layout as rundir
from tlplug.rundir.config_record import SavedRun, read_saved_run
from tlplug.ship import explain
from tlplug.ship.calibration import (
    fit_temperature,
    measured,
    reliability,
    scaled,
    write_calibration,
)
from tlplug.ship.predict import load_classifier
from tlplug.ship.tta import infer, views_transform
from tlplug.version import __version__

REPORT, CONFUSION, WORST = "eval.json", "confusion_matrix.png", "worst_images.png"
RELIABILITY = "reliability.png"
TOP_K = (1, 3, 5)  # capped at the number of classes
WORST_SHOWN = 16


@attrs.frozen
class EvalReport:
    """What :func:`evaluate_run` measured. ``confusion[i][j]`` counts images of class ``i``
    predicted as ``j``; ``per_class`` maps a class to its precision, recall, f1, support;
    ``worst`` lists the most confident mistakes; ``settings`` how the pass computed (tta,
    precision, channels_last, device, batch_size)."""

    run_dir: Path
    data: str  # what was evaluated
    split: str  # "val": the run's own or the data's val split; "all": all the data's images
    classes: tuple[str, ...]
    accuracy: float
    loss: float
    top_k: dict[int, float]
    ece: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    worst: list[dict[str, Any]]
    settings: dict[str, Any]
    best_val_acc: float | None = None  # the run's, when its own split was evaluated
    skipped: list[dict[str, str]] = attrs.field(factory=list)
    files: dict[str, str] = attrs.field(factory=dict)
    train_overlap: int = 0  # images evaluated that the run trained on (DATA given)
    calibration: dict[str, Any] | None = None  # the temperature, ECE and NLL before/after

    @property
    def num_images(self) -> int:
        """Images evaluated."""
        return sum(map(sum, self.confusion))

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (what eval.json holds)."""
        return {
            "tlplug_eval": __version__,
            "run": str(self.run_dir),
            "data": self.data,
            "split": self.split,
            **self.settings,
            "num_images": self.num_images,
            "accuracy": self.accuracy,
            "best_val_acc": self.best_val_acc,
            "loss": self.loss,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "ece": self.ece,
            "per_class": self.per_class,
            "classes": list(self.classes),
            "confusion_matrix": self.confusion,
            "worst": self.worst,
            "calibration": self.calibration,
            "skipped": self.skipped,
            "files": self.files,
            "train_overlap": self.train_overlap,
        }


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    tta: bool = False,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    plugins: PluginHost | None = None,
    write: bool = True,
    calibrate: bool = False,
) -> EvalReport:
    """Evaluate the best model of ``run_dir`` on its validation split, or on ``data`` (see
    the module's docstring); with ``write``, write the report and figures to ``out``
    (default ``run_dir/eval``). ``batch_size`` defaults to the run's; ``device`` to the
    run's own if this machine has it, else the CPU; ``tta`` averages the softmax over the
    views of :mod:`tlplug.ship.tta`. Probabilities are the run's calibrated ones (its
    temperature); ``calibrate`` fits the temperature on these images instead and keeps it
    in the run directory. The report has the ECE and NLL before and after."""
    run_dir = Path(run_dir)
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise TlplugError(f"evaluate_run: batch_size must be >= 1, got batch_size={batch_size!r}")
    plugins = plugins or PluginHost()
    out = Path(out) if out is not None else run_dir / "eval"
    if write:
        _check_out(out)
    saved = read_saved_run(run_dir, plugins.recipe_type, strict=False)
    if device is None:
        device = saved.resolved.get("device", "cpu")
        device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    classifier = load_classifier(run_dir, plugins, device)
    images, described, split, skipped = _images(plugins, saved, data)
    target, numerics = next(classifier.parameters()).device, classifier.run_numerics()
    size, config = saved.img_size, saved.data_config
    base = views_transform(config, size) if tta else base_transform(config, size)
    dataset = TransformedImages(images, base, None, random=False)
    batch_size = batch_size or saved.batch_size
    loader = make_loader(
        dataset,
        batch_size,
        train=False,
        workers=default_workers(target.type),
        seed=saved.recipe.seed,
        pin_memory=target.type == "cuda",
    )
    # The model's own logits, as training validated them; the temperature acts after.
    temperature, classifier.model.temperature = classifier.model.temperature, 1.0
    labels, preds, raw, loss = infer(classifier.model, loader, target, numerics, tta)
    if calibrate:
        temperature = fit_temperature(raw.clamp_min(1e-12).log(), labels)
    probs = scaled(raw, temperature)  # what predict gives
    calibration = {**measured(raw, labels, temperature), "fitted": calibrate}
    if calibrate:
        write_calibration(run_dir, {**calibration, "fitted_on": described})
    summary = run_dir / rundir.SUMMARY
    own = data is None and summary.is_file()
    best = rundir.read_json(summary).get("best_val_acc") if own else None
    worst = _worst(labels, preds, probs)
    paths, names = getattr(images, "paths", None), saved.classes
    overlap = listed_images(run_dir / rundir.TRAIN_LIST, paths) if data is not None else 0
    report = EvalReport(
        run_dir,
        described,
        split,
        names,
        loss=loss,
        best_val_acc=best,
        skipped=skipped,
        train_overlap=overlap,
        calibration=calibration,
        ece=calibration["ece_before"],  # the model's own probabilities, as loss is
        **_metrics(labels, preds, raw, names),
        worst=[
            {
                "source": str(paths[i]) if paths is not None else f"#{i}",
                "true": names[t],
                "predicted": names[p],
                "confidence": c,
            }
            for i, t, p, c in worst
        ],
        settings={
            "tta": tta,
            **numerics.describe(),
            "device": str(target),
            "batch_size": batch_size,
        },
    )
    if not write:
        return report
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": out / REPORT, "confusion_matrix": out / CONFUSION}
    save_png(draw_confusion(report.confusion, names), out / CONFUSION)
    save_png(
        draw_reliability(reliability(raw, labels), reliability(probs, labels)), out / RELIABILITY
    )
    files["reliability"] = out / RELIABILITY
    (out / WORST).unlink(missing_ok=True)  # an earlier eval's
    if worst:
        tiles = [dataset.pixels(i) for i, *_ in worst]
        captions = [f"true {names[t]}\npred {names[p]} {c:.2f}" for _, t, p, c in worst]
        pixels = torch.stack([t[0] if t.ndim == 4 else t for t in tiles])
        shown, columns = pixels.float() / 255, min(4, len(captions))
        if explain.available():  # each mistake beside the map of the class it was taken for
            heat = explain.Explainer(classifier).maps(pixels, [p for _, _, p, _ in worst])
            shown = torch.stack([shown, explain.overlays(pixels, heat)], 1).flatten(0, 1)
            maps = [f"Grad-CAM of\n{names[p]}" for _, _, p, _ in worst]
            captions = [c for pair in zip(captions, maps, strict=True) for c in pair]
            columns *= 2
        save_image(labelled_grid(shown, captions, columns), out / WORST)
        files["worst_images"] = out / WORST
    report = attrs.evolve(report, files={k: str(v) for k, v in files.items()})
    rundir.write_json(out / REPORT, report.to_json())
    return report


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or that holds a file of eval's names without an
    eval.json of eval's own beside it."""
    if out.exists() and not out.is_dir():
        raise TlplugError(f"{out} is a file; the eval report goes to a folder")
    present = [n for n in (REPORT, CONFUSION, WORST, RELIABILITY) if (out / n).exists()]
    with contextlib.suppress(TlplugError, TypeError, OSError):
        present = [] if "tlplug_eval" in rundir.read_json(out / REPORT) else present
    if present:
        raise TlplugError(
            f"{out / present[0]} exists and was not written by tlplug eval; "
            "choose another folder for the report"
        )


def _images(
    plugins: PluginHost, saved: SavedRun, data: str | os.PathLike | None
) -> tuple[ImageList, str, str, list[dict[str, str]]]:
    """The images to evaluate, what they are, the split ("val" or "all") and the files
    left out as unreadable."""
    spec, classes = saved.data_spec if data is None else data, saved.classes
    if spec is None:
        raise TlplugError(f"{saved.path} does not record where its data is; give the data")
    name, location = split_data_spec(spec, plugins.registry("data-sources").names())
    root = Path(location)
    if data is not None and name == "folder" and root.is_dir() and not (root / "train").is_dir():
        scan = scan_classes(root)  # DIR/<class>/: all its images, however few
        _same_classes(set(scan.by_class), classes, location)
        pairs = [(p, y) for y, c in enumerate(classes) for p in scan.by_class[c]]
        images = FileImages(tuple(p for p, _ in pairs), tuple(y for _, y in pairs))
        return images, location, "all", [s.to_json() for s in scan.skipped]
    if data is None and saved.resolved["data"]["num_val"] == 0:
        message = f"{saved.path} trained without validation; give data: tlplug eval RUN DATA"
        raise TlplugError(message)
    splits = load_data(plugins, spec, saved.recipe)
    skipped, had = [s.to_json() for s in splits.skipped], saved.resolved["data"]
    if data is None:
        checks = (
            (splits.classes != classes, f"its classes are now {', '.join(splits.classes)}"),
            (
                len(splits.val) != had["num_val"],
                f"it now gives {len(splits.val)} validation images, the run had {had['num_val']}",
            ),
            (
                splits.info.get("val_files_sha256") != had.get("val_files_sha256"),
                "it now holds out other validation files",
            ),
        )
        why = next((said for wrong, said in checks if wrong), None)
        if why:
            raise TlplugError(
                f"cannot rebuild the validation split of {saved.path} from {spec}: {why}; "
                "give the data to evaluate on as it is now"
            )
        return splits.val, f"its validation split ({spec})", "val", skipped
    _same_classes(set(splits.classes), classes, str(data))
    if splits.classes != classes:
        raise DataError(f"{data} has the run's classes in another order")
    parts = [x for x in (splits.train, splits.val, splits.test) if x is not None]
    if splits.info.get("layout") != "split" or not all(hasattr(x, "paths") for x in parts):
        return splits.val, str(data), "val", skipped  # the data's own validation split
    pairs = sorted((y, str(p)) for x in parts for p, y in zip(x.paths, x.labels, strict=True))
    images = FileImages(tuple(Path(p) for _, p in pairs), tuple(y for y, _ in pairs))
    return images, str(data), "all", skipped


def _same_classes(found: set[str], classes: tuple[str, ...], where: str) -> None:
    gone, new = set(classes) - found, found - set(classes)
    said = [f"{w} {', '.join(sorted(n))}" for w, n in (("missing", gone), ("extra", new)) if n]
    if said:
        raise DataError(
            f"{where} does not have the run's classes ({'; '.join(said)}); "
            f"the run knows {', '.join(classes)}"
        )


def _metrics(labels, preds, probs, classes) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1/support and the confusion."""
    n, count = len(classes), max(1, len(labels))
    confusion = torch.bincount(labels * n + preds, minlength=n * n).view(n, n)
    hits, support, predicted = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
    per_class = {}
    for i, name in enumerate(classes):
        p = hits[i].item() / predicted[i].item() if predicted[i] else 0.0
        r = hits[i].item() / support[i].item() if support[i] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": support[i].item()}
    top_k = {}
    for k in sorted({min(k, n) for k in TOP_K}):
        hit = (preds == labels) if k == 1 else (probs.topk(k, 1).indices == labels[:, None]).any(1)
        top_k[k] = hit.sum().item() / count
    return {
        "accuracy": int(hits.sum()) / count,
        "top_k": top_k,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _worst(labels, preds, probs) -> list[tuple[int, int, int, float]]:
    """The most confident wrong predictions: (index, true, predicted, confidence)."""
    confidence = probs.gather(1, preds[:, None]).squeeze(1)
    wrong = (preds != labels).nonzero().squeeze(1)
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:WORST_SHOWN]
    return [(i, labels[i].item(), preds[i].item(), confidence[i].item()) for i in order.tolist()]
