"""Plots in every run directory: training curves, the confusion matrix, the schedule.

At the end of a run (resumed runs included: the history holds every epoch) three PNGs are
drawn into the run directory with :mod:`tlplug.plotting`: ``curves.png`` (loss, accuracy and
each group's LR by epoch), ``confusion.png`` (the best weights on val; none when no epoch was
validated) and ``schedule.png``
(which layer groups train in which epoch, at what LR). Their names go into summary.json
under ``plots``. ``--no-plots`` turns them off. A plot that cannot be drawn never fails the
run: the console says so in one line. matplotlib is imported only when drawing, so loading
this plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tlplug import hookimpl
from tlplug.plotting import save_png
from tlplug.rundir.layout import PLOTS

CURVES, CONFUSION, SCHEDULE = PLOTS


@hookimpl(trylast=True)
def tlplug_run_end(run, summary) -> None:
    """Draw the plots into the run directory and list them in ``summary["plots"]``."""
    if not run.recipe.plots:
        return
    written, failed = [], []
    try:
        for name, draw in _drawings(run, summary):
            try:
                save_png(draw(), run.run_dir / name)
                written.append(name)
            except Exception as exc:  # a picture is never worth a failed run
                failed.append(f"{name} ({_reason(exc)})")
    except Exception as exc:
        failed.append(_reason(exc))
    summary["plots"] = written
    if failed:
        run.console.say(f"warning: plots not written: {'; '.join(failed)}")


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _drawings(run, summary: dict[str, Any]) -> list[tuple[str, Callable[[], Any]]]:
    """(file name, function drawing its figure) for each plot of ``run``."""
    from tlplug import plotting

    history = run.history
    groups = [name for name, _ in run.resolved.groups] or None
    epochs = f"{len(history)} epoch{'s' * (len(history) != 1)}"
    drawings = [
        (CURVES, partial(plotting.draw_curves, history, f"Training curves ({epochs})")),
        (
            SCHEDULE,
            partial(
                plotting.draw_schedule,
                history,
                groups,
                f"Freeze schedule ({run.recipe.schedule}, {epochs})",
            ),
        ),
    ]
    if summary.get("confusion_matrix"):  # empty when no epoch was validated
        weights = "weight average" if summary.get("best_source") == "ema" else "best weights"
        acc = summary.get("best_val_acc")
        where = f"{weights}, epoch {summary.get('best_epoch')}" + (
            f": val_acc {acc:.4f}" if acc is not None else ""
        )
        classes = summary.get("classes") or list(run.classes)
        drawings.insert(
            1,
            (
                CONFUSION,
                partial(
                    plotting.draw_confusion,
                    summary["confusion_matrix"],
                    classes,
                    f"Confusion matrix on val ({where})",
                ),
            ),
        )
    return drawings
