"""Loggers (``--logger``): the chosen ones follow the run, and the built-in ``csv``.

A logger is an object with any of ``run_start``, ``epoch_end``, ``step_end``, ``run_end``
and ``run_error``. At the start of a run this plugin makes the chosen loggers and keeps
them in the run's ``plugin_data``; its own lifecycle hooks pass them each event of that
run, the same hooks every plugin gets (one event system: no relay registered mid-run).
"""

from __future__ import annotations

import csv
from typing import Any

from tlplug import hookimpl
from tlplug.rundir import layout as rundir

METRICS_CSV = "metrics.csv"
KEY = "loggers"  # where a run's loggers are kept in run.plugin_data


@hookimpl
def tlplug_register_loggers(register):
    register("csv", csv_logger)


@hookimpl(trylast=True)
def tlplug_run_start(run) -> None:
    loggers = [choice.strategy.factory(**choice.options) for choice in run.parts["loggers"]]
    run.plugin_data[KEY] = loggers
    _call(loggers, "run_start", run)


@hookimpl
def tlplug_step_end(run, step) -> None:
    _call(run.plugin_data.get(KEY, ()), "step_end", run, step)


@hookimpl(trylast=True)
def tlplug_epoch_end(run, record) -> None:
    _call(run.plugin_data.get(KEY, ()), "epoch_end", run, record)


@hookimpl(trylast=True)
def tlplug_run_end(run, summary) -> None:
    _call(run.plugin_data.pop(KEY, ()), "run_end", run, summary)


@hookimpl(trylast=True)
def tlplug_run_error(run, reason, error) -> None:
    _call(run.plugin_data.pop(KEY, ()), "run_error", run, reason, error)


def _call(loggers, method: str, *args: Any) -> None:
    """Call ``method`` of every logger that has it; a logger's error does not keep the
    others from their call, and the first error is raised after them."""
    errors = []
    for logger in loggers:
        if hasattr(logger, method):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:
                errors.append(exc)
    if errors:
        raise errors[0]


def csv_logger():
    """metrics.csv: one row per epoch, losses, accuracies, time and each group's LR."""
    return CsvLog()


class CsvLog:
    """Writes metrics.csv in the run directory, true to the run: a fresh run starts it anew,
    a resumed one keeps the rows of the epochs it keeps."""

    COLUMNS = (
        "epoch",
        "stage_name",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "seconds",
        "images_per_s",
        "is_best",
    )

    def run_start(self, run) -> None:
        self.path = run.run_dir / METRICS_CSV
        self.columns = [*self.COLUMNS, *(f"lr_{group}" for group in run.model.group_names())]
        rows = [self._row(r) for r in run.history]  # resumed: the epochs it keeps, else none
        self._write(rows)

    def epoch_end(self, run, record) -> None:
        with open(self.path, "a", newline="") as out:
            csv.writer(out).writerow(self._row(record))

    def _row(self, record: dict[str, Any]) -> list[Any]:
        values = {**record, **{f"lr_{g}": lr for g, lr in record["lr"].items()}}
        return ["" if values.get(c) is None else values.get(c, "") for c in self.columns]

    def _write(self, rows: list[list[Any]]) -> None:
        rundir.write_atomic(self.path, lambda out: csv.writer(out).writerows([self.columns, *rows]))
