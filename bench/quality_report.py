"""The quality benchmark's results: one row per recipe and task, printed as tables and
written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

BASELINE = "article: fc then layer4"  # the row other rows' seconds are divided by


@dataclass
class Row:
    """One recipe's outcome on one task; accuracies are None where the run gave none."""

    recipe: str
    best: float | None
    final: float | None
    seconds: float
    note: str = ""
    load: float | None = None  # 1-minute load average when the row finished


@dataclass
class TaskResult:
    """A task's description, image counts and rows."""

    name: str
    what: str
    train: int
    val: int
    classes: int
    rows: list[Row] = field(default_factory=list)


def _acc(value: float | None) -> str:
    return "   -  " if value is None else f"{value:.4f}"


def _relative(row: Row, rows: list[Row]) -> str:
    base = next((r.seconds for r in rows if r.recipe == BASELINE), None)
    return f"{row.seconds / base:5.2f}x" if base else "   -  "


def print_task(task: TaskResult, epochs: int, size: int) -> None:
    """One task's table: best and final val acc, seconds, seconds / the baseline loop's."""
    print(
        f"\n{task.name}: {task.what}; {task.classes} classes, {task.train} train / "
        f"{task.val} val, {size} px, {epochs} epochs"
    )
    print(
        f"  {'recipe':<26} {'best':>6} {'final':>6} {'seconds':>8} {'vs ' + BASELINE:>28}"
        f" {'load':>5}"
    )
    for row in task.rows:
        load = "-" if row.load is None else f"{row.load:.1f}"
        print(
            f"  {row.recipe:<26} {_acc(row.best)} {_acc(row.final)} {row.seconds:8.1f} "
            f"{_relative(row, task.rows):>28} {load:>5}  {row.note}".rstrip()
        )


def print_summary(tasks: list[TaskResult]) -> None:
    """Across tasks: each recipe's best val acc per task, their means and total seconds."""
    recipes = list(dict.fromkeys(row.recipe for task in tasks for row in task.rows))
    names = [task.name[:14] for task in tasks]
    print("\nsummary: best val acc per task, mean best, mean final, total seconds")
    header = "".join(f" {name:>14}" for name in names)
    print(f"  {'recipe':<26}{header} {'mean best':>9} {'mean final':>10} {'seconds':>8}")
    for recipe in recipes:
        rows = [next((r for r in t.rows if r.recipe == recipe), None) for t in tasks]
        cells = "".join(f" {_acc(r.best if r else None):>14}" for r in rows)
        best = [r.best for r in rows if r and r.best is not None]
        final = [r.final for r in rows if r and r.final is not None]
        mean_best = f"{sum(best) / len(best):.4f}" if len(best) == len(tasks) else "-"
        mean_final = f"{sum(final) / len(final):.4f}" if len(final) == len(tasks) else "-"
        seconds = sum(r.seconds for r in rows if r)
        print(f"  {recipe:<26}{cells} {mean_best:>9} {mean_final:>10} {seconds:8.1f}")


def write_json(path: Path, tasks: list[TaskResult], settings: dict) -> None:
    """All rows and the settings they ran with, as JSON."""
    data = {"settings": settings, "tasks": [asdict(task) for task in tasks]}
    path.write_text(json.dumps(data, indent=1) + "\n")
