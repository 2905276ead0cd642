"""A search's leaderboard: every candidate with its result in each rung it reached, best
first, as ``leaderboard.json`` (a list of entries), ``leaderboard.csv`` and a table."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlplug.rundir import layout as rundir
from tlplug.search.halving import Entry

JSON = "leaderboard.json"
CSV = "leaderboard.csv"
COLUMNS = (
    "rank",
    "schedule",
    "lr",
    "lr_decay",
    "rungs_reached",
    "epochs",
    "best_val_acc",
    "val_loss",
    "seconds",
    "error",
)


def leaderboard(board: Sequence[Entry], results: dict[tuple[Any, int], dict]) -> list[dict]:
    """JSON-ready entries of ``board`` (ranked, winner first): the candidate, each rung's
    held-out ``best_val_acc``, its ``val_loss`` and seconds, and those of its last rung."""
    entries = []
    for rank, entry in enumerate(board, start=1):
        rungs = []
        for result in entry.results:
            found = results[entry.candidate, result.epochs]
            rungs.append({"rung": result.rung + 1, "epochs": result.epochs, **found})
        last = rungs[-1] if rungs else {}
        entries.append(
            {
                "rank": rank,
                **entry.candidate.to_json(),
                "rungs_reached": len(rungs),
                "epochs": last.get("epochs"),
                "best_val_acc": last.get("best_val_acc"),
                "val_loss": last.get("val_loss"),
                "seconds": round(sum(r["seconds"] for r in rungs), 2),
                "error": last.get("error"),
                "winner": rank == 1,
                "rungs": rungs,
            }
        )
    return entries


def write_leaderboard(folder: Path, entries: list[dict]) -> None:
    """Write ``leaderboard.json`` and ``leaderboard.csv`` into ``folder``."""
    rundir.write_json(folder / JSON, entries)
    rows = [[_cell(entry.get(column)) for column in COLUMNS] for entry in entries]
    rundir.write_atomic(folder / CSV, lambda out: csv.writer(out).writerows([COLUMNS, *rows]))


def table(entries: list[dict], scored: str = "held-out") -> list[str]:
    """The leaderboard as lines of a table, winner first; ``scored`` says on what the
    accuracy was measured (``held-out``, ``5-fold``)."""
    deepest = max((e["rungs_reached"] for e in entries), default=0)
    width = max([len("schedule"), *(len(e["schedule"]) for e in entries)])
    lines = [
        f"leaderboard ({scored} accuracy of each candidate's last rung):",
        f"  {'rank':>4}  {'schedule':<{width}}  {'lr':>8}  {'lr decay':>8}  {'rung':>5}  "
        f"{'epochs':>6}  {'acc':>6}  {'loss':>7}  {'seconds':>7}",
    ]
    for e in entries:
        acc = "failed" if e["error"] else f"{e['best_val_acc']:.4f}"
        loss = "-" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        decay = "-" if e["lr_decay"] is None else f"{e['lr_decay']:g}"
        lr = f"{e['lr']:.3g}" if isinstance(e["lr"], float) else str(e["lr"])
        lines.append(
            f"  {e['rank']:>4}  {e['schedule']:<{width}}  {lr:>8}  {decay:>8}  "
            f"{str(e['rungs_reached']) + '/' + str(deepest):>5}  {e['epochs']:>6}  {acc:>6}  "
            f"{loss:>7}  {e['seconds']:>7.1f}"
        )
    return lines


def _cell(value: Any) -> Any:
    return "" if value is None else value


def tie_warning(entries: list[dict], held_out: int, order: str) -> str | None:
    """A warning when the winner ties on held-out accuracy with other candidates of its
    rung: the search's ``order`` (what comes first) decided, and on few images the tie
    says little."""
    top = entries[0]
    mark = (top["epochs"], top["best_val_acc"])
    tied = [
        e["schedule"]
        for e in entries
        if not e["error"] and (e["epochs"], e["best_val_acc"]) == mark
    ]
    if len(tied) < 2:
        return None
    return (
        f"warning: {len(tied)} candidates tie at held-out accuracy {top['best_val_acc']:.4f} "
        f"on {held_out} images ({', '.join(tied)}); the search's order ({order}) chose "
        f"{top['schedule']}. With so few images the search cannot rank them: try the tied "
        "schedules on your validation split"
    )
