"""summary.json: the outcome of a finished run, with its calibration (a temperature fitted
on the validation images, kept in calibration.json) and its test results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tlplug.data.sources import Skipped
from tlplug.run import Run
from tlplug.ship.calibration import fit_temperature, measured, write_calibration
from tlplug.ship.tta import infer
from tlplug.train.best_so_far import Tally, per_class
from tlplug.train.step import evaluate


def summarize(run: Run, tally: Tally, failures: Path) -> dict[str, Any]:
    """The summary of ``run`` after its last epoch; ``failures`` is the log of images that
    failed to decode while training (read, then removed). With test images, the saved best
    weights are evaluated on them as ``tlplug predict`` loads them."""
    data = run.resolved.data
    skipped = _skipped_files(run.skipped, failures)
    train_paths = {str(p) for p in getattr(run.data.train, "paths", ())}
    replaced = sum(1 for s in skipped[len(run.skipped) :] if s.path in train_paths)
    summary = {
        "best_val_acc": tally.best_acc if tally.validated else None,
        "best_epoch": tally.best_epoch,
        "best_source": tally.best_source,
        "final_val_acc": run.history[-1]["val_acc"],
        "epochs": run.recipe.epochs,
        "epochs_trained": run.history[-1]["epoch"],
        "stopped_early": tally.stopped_early,
        "seconds": round(tally.seconds, 2),
        "skipped_nonfinite": tally.skipped_nonfinite,
        "classes": list(run.classes),
        "num_train": data["num_train"] - replaced,
        "num_val": data["num_val"],
        "per_class_val_acc": tally.per_class(run.classes),
        "per_class_val_count": dict(zip(run.classes, tally.per_class_count, strict=False)),
        "confusion_matrix": tally.confusion,
    }
    if len(run.loaders.val) or run.loaders.test is not None:
        from tlplug.ship.predict import load_classifier

        best = load_classifier(run.run_dir, run.plugins, str(run.device)).model
        if len(run.loaders.val):
            summary["calibration"] = calibrate(run, best)
        if run.loaders.test is not None:
            summary.update(_test(run, best))
    summary["skipped_files"] = [s.to_json() for s in skipped]
    return summary


def calibrate(run: Run, best: nn.Module) -> dict[str, Any]:
    """Fit the temperature of ``best`` (the run's best model, as loaded) on the validation
    images, keep it in the run directory and set it on ``best``; return its record."""
    best.temperature = 1.0
    labels, _, probs, _ = infer(best, run.loaders.val, run.device, run.numerics, tta=False)
    record = measured(probs, labels, fit_temperature(probs.clamp_min(1e-12).log(), labels))
    record["fitted_on"] = "validation"
    write_calibration(run.run_dir, record)
    best.temperature = record["temperature"]
    return record


def _test(run: Run, best: nn.Module) -> dict[str, Any]:
    test = evaluate(best, run.loaders.test, run.device, len(run.classes), run.numerics)
    return {
        "test_acc": test.stats.acc,
        "test_loss": test.stats.loss,
        "num_test": test.stats.images,
        "per_class_test_acc": per_class(run.classes, test.correct, test.count),
    }


def _skipped_files(found: tuple[Skipped, ...], failures: Path) -> list[Skipped]:
    """The files the data check left out, then those that failed to decode while training
    (read from, then removed with, the log the loaders append to)."""
    skipped = list(found)
    if failures.exists():
        seen = {s.path for s in skipped}
        for line in failures.read_text(encoding="utf-8").splitlines():
            path, _, reason = line.partition("\t")
            if path not in seen:
                seen.add(path)
                skipped.append(Skipped(path, reason))
        failures.unlink()
    return skipped
