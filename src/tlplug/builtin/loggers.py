"""Loggers (``--logger``): the chosen ones follow the run, and the built-in ``csv``.

At the start of a run this plugin makes the chosen loggers and registers a relay that
passes them the lifecycle events of that run; the relay has a step hook only when a
logger wants steps, so a run whose loggers do not pays nothing per step. The relay leaves
when the run ends, however it ends.
"""

from __future__ import annotations

import csv
from typing import Any

from tlplug import hookimpl
from tlplug.rundir import layout as rundir

METRICS_CSV = "metrics.csv"


@hookimpl
def tlplug_register_loggers(register):
    register("csv", csv_logger)


@hookimpl(trylast=True)
def tlplug_run_start(run) -> None:
    loggers = [choice.strategy.factory(**choice.options) for choice in run.parts["loggers"]]
    if not loggers:
        return
    relay = (StepRelay if any(hasattr(x, "step_end") for x in loggers) else Relay)(run, loggers)
    run.plugins.pm.register(relay, name=relay.name)
    try:
        relay.call("run_start", run)
    except BaseException:
        run.plugins.pm.unregister(relay)
        raise


class Relay:
    """Passes one run's lifecycle events to its loggers."""

    def __init__(self, run, loggers: list[Any]):
        self.loggers, self.name = loggers, f"loggers-of-{id(run)}"

    def call(self, method: str, *args: Any) -> None:
        """Call ``method`` of every logger that has it; a logger's error does not keep the
        others from their call, and the first error is raised after them."""
        errors = []
        for logger in self.loggers:
            if hasattr(logger, method):
                try:
                    getattr(logger, method)(*args)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    @hookimpl(trylast=True)
    def tlplug_epoch_end(self, run, record) -> None:
        self.call("epoch_end", run, record)

    @hookimpl(trylast=True)
    def tlplug_run_end(self, run, summary) -> None:
        try:
            self.call("run_end", run, summary)
        finally:
            run.plugins.pm.unregister(self)

    @hookimpl(trylast=True)
    def tlplug_run_error(self, run, reason, error) -> None:
        try:
            self.call("run_error", run, reason, error)
        finally:
            run.plugins.pm.unregister(self)


class StepRelay(Relay):
    """A relay for loggers that want every step."""

    @hookimpl
    def tlplug_step_end(self, run, step) -> None:
        self.call("step_end", run, step)


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
