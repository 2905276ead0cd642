"""``tlplug search`` and ``--schedule auto``: freeze schedules and learning rates compared on
held-out training images (the leading ones at full length, the rest by successive halving,
:mod:`tlplug.halving`), then the winner trained in full.

The candidates (:mod:`tlplug.candidates`) train as ordinary runs of the engine, so their
head stages use the feature cache and their partly frozen stages the prefix replay. They
train on a CSV manifest of the run's *training* images with a seeded, stratified fifth of
each class marked ``val``: the run's own validation images never choose. Each rung's run
is complete for its length (the freeze plan and LR schedule are made for it); of each only
its metrics are kept. The winner then trains with the whole recipe on the original data
into the run directory, beside ``leaderboard.json``/``.csv`` and ``search/`` (the held-out
manifest and the candidates' metrics). Its config.json names the winning schedule, so
``--config RUN/config.json`` repeats it without searching.
"""

from __future__ import annotations

import csv
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlplug import rundir
from tlplug.candidates import HOLD_OUT, Candidate, candidates, cost, searchable
from tlplug.console import Console
from tlplug.data import load_data
from tlplug.data.folders import stratified_split
from tlplug.data.sources import DecodeError, Splits
from tlplug.errors import DataError, OptionError, TlplugError, one_line
from tlplug.halving import (
    BUDGET_HELP,
    MIN_EPOCHS,
    Entry,
    parse_budget,
    plan_rungs,
    successive_halving,
)
from tlplug.leaderboard import JSON, leaderboard, table, tie_warning, write_leaderboard
from tlplug.plugins import PluginHost

DEFAULT_BUDGET = "3x"
MANIFEST = "holdout.csv"  # the search's split of the training images
SEARCH_DIR = "search"  # in the run directory: the manifest and the candidates' metrics


def search_and_fit(
    engine_type: Any,
    plugins: PluginHost,
    recipe: Any,
    data: str | os.PathLike | None = None,
    *,
    budget: str = DEFAULT_BUDGET,
    eta: int = 3,
    schedules: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    command: list[str] | None = None,
) -> Any:
    """Search ``recipe``'s schedule, LR and LR decay within ``budget`` on ``data``'s
    training images, then train the winner into ``out``; return its FitResult.
    ``engine_type`` is :class:`tlplug.Engine` (passed in: the engine calls this)."""
    limit = parse_budget(budget)
    if eta < 2:
        raise OptionError(f"--eta must be at least 2, not {eta}")
    out = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
    rundir.check_run_dir(out, overwrite)
    names = searchable(plugins, schedules)
    tried = candidates(plugins, recipe, names)
    if len(tried) < 2:
        raise OptionError(f"nothing to search: {len(tried)} candidate; name more --schedules")
    console = Console(quiet)
    splits = load_data(plugins, data, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.search-", dir=out.parent))
    try:
        holdout = write_holdout(splits, work, recipe.seed)
        counts = tuple(sum(row[2] == split for row in holdout[1:]) for split in ("train", "val"))
        trials = Trials(engine_type, plugins, recipe, work, recipe.img_size or splits.img_size,
                        counts)  # fmt: skip
        board, plan = _halve(trials, tried, names, limit, eta, console)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    entries = leaderboard(board, trials.results)
    if entries[0]["error"]:  # every candidate failed
        shutil.rmtree(work, ignore_errors=True)
        raise TlplugError(f"no candidate trained: {entries[0]['schedule']}: {entries[0]['error']}")
    rundir.write_json(work / JSON, entries)
    for line in [*table(entries), tie_warning(entries, trials.counts[1])]:
        if line:
            console.say(line)
    winner = board[0].candidate
    console.say(f"winner: {winner.label()}; training it on the whole data, {recipe.epochs} epochs")
    try:
        engine = engine_type(plugins, winner.recipe(recipe))
        result = engine.fit(data, out=out, overwrite=overwrite, quiet=quiet, command=command)
    except BaseException:
        console.say(f"the search's leaderboard stays in {work}")
        raise
    note = {
        "searched": "schedule, lr, lr_decay", "winner": winner.to_json(), "budget": limit.text,
        "eta": eta, "plan": plan.describe(), "leaderboard": JSON,
        "held_out": f"{SEARCH_DIR}/{MANIFEST}", "seconds": round(trials.seconds, 2),
    }  # fmt: skip
    _finish(out, work, entries, holdout, note)
    return result


def _halve(trials: Trials, tried: list[Candidate], names: list[str], limit, eta: int,
           console: Console) -> tuple[list[Entry], Any]:  # fmt: skip
    """Plan the rungs within ``limit`` (timing one candidate first for a time budget),
    print the plan and run it."""
    full = trials.recipe.epochs

    def price(index: int, epochs: int) -> float:
        return cost(trials.plugins, tried[index].schedule, epochs, full)

    runs, shortest = limit.runs, min(MIN_EPOCHS, full)
    if runs is None:  # seconds: time the costliest first-LR candidate in a first-rung run
        probe = max(range(len(names)), key=lambda i: (price(i, shortest), -i))
        started = time.perf_counter()
        trials.score(tried[probe], shortest)  # kept: the first rung does not train it again
        spent = time.perf_counter() - started
        run_seconds = spent / price(probe, shortest)
        runs = max(0.0, limit.seconds - spent) / run_seconds
        console.say(
            f"timing: {tried[probe].label()} for {shortest} epoch(s) took {spent:.1f} s; a full "
            f"run takes about {run_seconds:.0f} s, so {limit.text} buys {runs:.1f} full runs"
        )
    plan = plan_rungs(len(tried), full, runs, price, eta, cover=len(names))
    if plan is None:
        least = price(0, shortest) + price(1, shortest)
        raise OptionError(
            f"--budget {limit.text} is too small: two candidates for {shortest} epoch(s) cost "
            f"about {least:.2f} full runs; give more ({BUDGET_HELP})"
        )
    console.say(f"search: {plan.describe()} (budget {limit.text}, eta {eta})")
    console.say(f"  on {trials.counts[0]} training images; {trials.counts[1]} held out to score")

    def report(rung: int, entry: Entry) -> None:
        found = trials.results[entry.candidate, entry.last.epochs]
        what = f"error: {found['error']}" if found["error"] else (
            f"held-out acc {found['best_val_acc']:.4f}")  # fmt: skip
        console.say(
            f"rung {rung + 1}/{len(plan.epochs)}: {entry.candidate.label()}, "
            f"{entry.last.epochs} epoch{'s' if entry.last.epochs > 1 else ''}: {what} "
            f"in {found['seconds']:.1f} s"
        )

    board = successive_halving(
        tried[: plan.candidates], trials.score, plan.epochs, eta, report, plan.seeded
    )
    return board, plan


class Trials:
    """Scores candidates: one complete run each on the held-out split, once per length."""

    def __init__(self, engine_type: Any, plugins: PluginHost, recipe: Any, work: Path,
                 img_size: int | None, counts: tuple[int, int]):  # fmt: skip
        self.engine_type, self.plugins, self.recipe, self.work = engine_type, plugins, recipe, work
        self.img_size = img_size
        self.manifest = work / MANIFEST
        self.results: dict[tuple[Candidate, int], dict[str, Any]] = {}
        self.seconds = 0.0
        self.counts = counts  # (training, held-out) images in the manifest

    def score(self, candidate: Candidate, epochs: int) -> float:
        """Held-out accuracy of ``candidate`` trained for ``epochs`` epochs (-1: it failed).

        Equal accuracies go to the earlier candidate (the strongest usual choices come
        first), not to the lower held-out loss: a schedule that starts from a converged,
        L2-regularized probe has a lower loss at the same accuracy. On bench/quality.py's
        photo-id, ``freeze-unfreeze``'s loss was 3 to 7 times lower than ``full``'s on
        folds where both scored 100%, and ``full`` was the more accurate on the third."""
        if (candidate, epochs) not in self.results:
            self.results[candidate, epochs] = self._train(candidate, epochs)
        found = self.results[candidate, epochs]
        return -1.0 if found["error"] else found["best_val_acc"]

    def _train(self, candidate: Candidate, epochs: int) -> dict[str, Any]:
        recipe = candidate.recipe(
            self.recipe, epochs=epochs, plots=False, keep_state=False, val_split=None,
            data_opts={}, img_size=self.img_size, logger=(), logger_opts={},
        )  # fmt: skip
        out = self.work / "run"
        name = f"{candidate.label().replace(' ', '-')}-e{epochs}.jsonl"
        started = time.perf_counter()
        found: dict[str, Any] = {"best_val_acc": None, "val_loss": None, "error": None}
        try:
            engine = self.engine_type(self.plugins, recipe)
            fit = engine.fit(self.manifest, out=out, overwrite=True, quiet=True)
            best = [r for r in fit.history if r["epoch"] == fit.best_epoch] or fit.history[-1:]
            found |= {"best_val_acc": fit.best_val_acc, "val_loss": best[0].get("val_loss")}
            (self.work / "metrics").mkdir(exist_ok=True)
            shutil.move(out / rundir.METRICS, self.work / "metrics" / name)
        except TlplugError as exc:  # a candidate that cannot train loses; the search goes on
            found["error"] = one_line(exc)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            gc.collect()
        found["seconds"] = round(time.perf_counter() - started, 2)
        self.seconds += found["seconds"]
        return found


def write_holdout(splits: Splits, folder: Path, seed: int) -> list[list[str]]:
    """Write ``folder/holdout.csv``: every training image of ``splits`` as a
    ``path,label,split`` row, a seeded, stratified :data:`HOLD_OUT` of each class as
    ``val``. Images of a source without files are saved as PNGs beside it. Return the
    rows as the run directory keeps them (``#INDEX`` for an image that has no file)."""
    train, classes = splits.train, splits.classes
    by_class: dict[str, list[int]] = {name: [] for name in classes}
    for index, label in enumerate(train.labels):
        by_class[classes[label]].append(index)
    kept, held = stratified_split(by_class, classes, HOLD_OUT, seed)
    if not held:
        raise DataError(f"{len(train)} training images are too few to hold out a search split")
    paths = getattr(train, "paths", None)
    rows, record = [], []
    for split, pairs in (("train", kept), ("val", held)):
        for index, label in pairs:
            if paths is not None:
                path = str(Path(paths[index]).resolve())
            else:
                path = f"images/{index}.png"
                try:
                    (folder / "images").mkdir(exist_ok=True)
                    train.load(index).save(folder / path)
                except DecodeError:
                    continue
            rows.append([path, classes[label], split])
            record.append([path if paths is not None else f"#{index}", classes[label], split])
    with open(folder / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label", "split"], *rows])
    return [["path", "label", "split"], *record]


def _finish(out: Path, work: Path, entries: list[dict], holdout: list[list[str]],
            note: dict[str, Any]) -> None:  # fmt: skip
    """Put the leaderboard, the held-out manifest and the candidates' metrics into the run
    directory ``out``, note the search in its config.json and remove ``work``."""
    write_leaderboard(out, entries)
    keep = out / SEARCH_DIR
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    with open(keep / MANIFEST, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(holdout)
    if (work / "metrics").is_dir():
        shutil.move(work / "metrics", keep / "metrics")
    config = rundir.read_json(out / rundir.CONFIG)
    rundir.write_json(out / rundir.CONFIG, {**config, "search": note})
    shutil.rmtree(work, ignore_errors=True)
