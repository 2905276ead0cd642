"""``tlplug search`` and ``--schedule auto``: freeze schedules and learning rates compared on
held-out training images (the leading ones at full length, the rest by successive halving,
:mod:`tlplug.search.halving`), then the winner trained in full.

The candidates (:mod:`tlplug.search.candidates`) train as ordinary runs of the engine, so their
head stages use the feature cache and their partly frozen stages the prefix replay. They
train on a CSV manifest of the run's *training* images with a seeded, stratified fifth of
each class marked ``val``, or, on few images, once per fold of a cross-validation
(:mod:`tlplug.search.holdout`): the run's own validation images never choose. Each rung's run
is complete for its length (the freeze plan and LR schedule are made for it); of each only
its metrics are kept. The winner then trains with the whole recipe on the original data
into the run directory, beside ``leaderboard.json``/``.csv`` and ``search/`` (which
training images were held out and the candidates' metrics). Its config.json names the
winning schedule, so ``--config RUN/config.json`` repeats it without searching.
"""

from __future__ import annotations

import csv
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlplug.console import Console
from tlplug.errors import OptionError, TlplugError, one_line
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.recipe import AUTO
from tlplug.rundir import layout as rundir
from tlplug.search.candidates import PRIORITY, Candidate, candidates, cost, search_order, searchable
from tlplug.search.halving import (
    BUDGET_HELP,
    MIN_EPOCHS,
    Entry,
    parse_budget,
    plan_rungs,
    successive_halving,
)
from tlplug.search.holdout import choose_folds, write_folds
from tlplug.search.leaderboard import JSON, leaderboard, table, tie_warning, write_leaderboard
from tlplug.train.fit import fit_recipe

DEFAULT_BUDGET = "auto"  # 3 full runs a fold
RUNS_PER_FOLD = 3.0
MANIFEST = "holdout.csv"  # in the run directory: which training image each fold held out
SEARCH_DIR = "search"  # in the run directory: the manifest and the candidates' metrics


def search_and_fit(
    plugins: PluginHost,
    recipe: Any,
    data: str | os.PathLike | None = None,
    *,
    budget: str = DEFAULT_BUDGET,
    folds: int | str = AUTO,
    eta: int = 3,
    schedules: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    command: list[str] | None = None,
) -> Any:
    """Search ``recipe``'s schedule, LR and LR decay within ``budget`` on ``data``'s
    training images (scored on ``folds`` held-out folds), then train the winner into
    ``out``; return its FitResult. Every candidate and the winner train as
    :func:`tlplug.train.fit.fit_recipe`, the path ``Engine.fit`` takes. The ``auto`` budget
    is 3 full runs a fold."""
    choose_folds(folds, 0)  # a bad --folds or --budget fails before the data loads
    limit = parse_budget(budget)
    if eta < 2:
        raise OptionError(f"--eta must be at least 2, not {eta}")
    out = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
    rundir.check_run_dir(out, overwrite)
    tried = candidates(plugins, recipe, searchable(plugins, schedules))
    if len(tried) < 2:
        raise OptionError(f"nothing to search: {len(tried)} candidate; name more --schedules")
    console = Console(quiet)
    splits = load_data(plugins, data, recipe)
    per_class = statistics.median(Counter(splits.train.labels).values() or [0])
    names = searchable(plugins, schedules, per_class)  # their order depends on the data
    tried = candidates(plugins, recipe, names)
    first, order = search_order(per_class)
    if schedules:
        order = "as --schedules names them"
    elif first is not PRIORITY:
        console.say(f"search order: {order} ({', '.join(names)})")
    folds = choose_folds(folds, len(splits.train))
    if limit.auto:
        limit = parse_budget(f"{RUNS_PER_FOLD * folds:g}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.search-", dir=out.parent))
    try:
        manifests, holdout = write_folds(splits, work, folds, recipe.seed)
        trials = Trials(plugins, recipe, work, recipe.img_size or splits.img_size, manifests)
        board, plan = _halve(trials, tried, names, limit, eta, console)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    entries = leaderboard(board, trials.results)
    if entries[0]["error"]:  # every candidate failed
        shutil.rmtree(work, ignore_errors=True)
        raise TlplugError(f"no candidate trained: {entries[0]['schedule']}: {entries[0]['error']}")
    rundir.write_json(work / JSON, entries)
    for line in [*table(entries, trials.scored()), tie_warning(entries, sum(trials.held), order)]:
        if line:
            console.say(line)
    winner = board[0].candidate
    console.say(f"winner: {winner.label()}; training it on the whole data, {recipe.epochs} epochs")
    try:
        result = fit_recipe(
            plugins,
            winner.recipe(recipe),
            data,
            out,
            overwrite=overwrite,
            quiet=quiet,
            command=command,
        )
    except BaseException:
        console.say(f"the search's leaderboard stays in {work}")
        raise
    note = {
        "searched": "schedule, lr, lr_decay",
        "winner": winner.to_json(),
        "budget": limit.text,
        "folds": folds,
        "eta": eta,
        "plan": plan.describe(),
        "leaderboard": JSON,
        "held_out": f"{SEARCH_DIR}/{MANIFEST}",
        "seconds": round(trials.seconds, 2),
    }
    _finish(out, work, entries, holdout, note)
    return result


def _halve(
    trials: Trials, tried: list[Candidate], names: list[str], limit, eta: int, console: Console
) -> tuple[list[Entry], Any]:
    """Plan the rungs within ``limit`` (timing one candidate first for a time budget),
    print the plan and run it."""
    full = trials.recipe.epochs

    def price(index: int, epochs: int) -> float:
        return cost(trials.plugins, tried[index].schedule, epochs, full) * len(trials.folds)

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
        folds = len(trials.folds)
        each = f" ({folds} folds each)" if folds > 1 else ""
        fewer = ", or --folds 1" if folds > 1 else ""
        raise OptionError(
            f"--budget {limit.text} is too small: two candidates for {shortest} epoch(s) cost "
            f"about {least:.2f} full runs{each}; give more ({BUDGET_HELP}){fewer}"
        )
    console.say(f"search: {plan.describe()} (budget {limit.text}, eta {eta})")
    console.say(f"  {trials.describe()}")

    def report(rung: int, entry: Entry) -> None:
        found = trials.results[entry.candidate, entry.last.epochs]
        what = (
            f"error: {found['error']}"
            if found["error"]
            else (f"{trials.scored()} acc {found['best_val_acc']:.4f}")
        )
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
    """Scores candidates: one complete run each per fold of the training images, once per
    length; a candidate's score is its held-out accuracy over every fold's images."""

    def __init__(
        self,
        plugins: PluginHost,
        recipe: Any,
        work: Path,
        img_size: int | None,
        folds: list[Path],
    ):
        self.plugins, self.recipe, self.work = plugins, recipe, work
        self.img_size = img_size
        self.folds = folds  # a manifest per fold: its held-out images are "val"
        self.results: dict[tuple[Candidate, int], dict[str, Any]] = {}
        self.seconds = 0.0
        self.held = [_count(fold, "val") for fold in folds]
        self.images = _count(folds[0], "train") + self.held[0]

    def scored(self) -> str:
        """What a score is: ``held-out`` or ``5-fold``."""
        return "held-out" if len(self.folds) == 1 else f"{len(self.folds)}-fold"

    def describe(self) -> str:
        """Which images train and which score, in one line."""
        if len(self.folds) == 1:
            trained = self.images - self.held[0]
            return f"on {trained} training images; {self.held[0]} held out to score"
        return (
            f"{len(self.folds)}-fold cross-validation on {self.images} training images: "
            f"each candidate trains once per fold, scored on the {sum(self.held)} images its "
            f"folds hold out ({'/'.join(map(str, self.held))}); a held-out fifth would be "
            "too few to rank them (--folds 1 to score on one)"
        )

    def score(self, candidate: Candidate, epochs: int) -> float:
        """Held-out accuracy of ``candidate`` trained for ``epochs`` epochs, over every
        fold's held-out images (-1: it failed).

        Equal accuracies go to the earlier candidate (the search's order, see
        :func:`tlplug.search.candidates.searchable`), not to the lower held-out loss: a schedule
        that starts from a converged, L2-regularized probe has a lower loss at the same
        accuracy. On bench/quality.py's photo-id, ``freeze-unfreeze``'s loss was 3 to 7
        times lower than ``full``'s on folds where both scored 100%, and ``full`` was the
        more accurate on the third."""
        if (candidate, epochs) not in self.results:
            runs = []
            for fold, manifest in enumerate(self.folds, start=1):
                runs.append(self._train(candidate, epochs, manifest, fold))
                if runs[-1]["error"]:
                    break
            self.results[candidate, epochs] = self._pool(runs)
        found = self.results[candidate, epochs]
        return -1.0 if found["error"] else found["best_val_acc"]

    def _pool(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """One result from the folds' runs: accuracy and loss weighted by held-out images."""
        seconds = round(sum(run["seconds"] for run in runs), 2)
        if len(runs) == 1 or runs[-1]["error"]:
            return {**runs[-1], "seconds": seconds}

        def mean(key: str) -> float | None:
            values = [run[key] for run in runs]
            if None in values:
                return None
            return sum(v * n for v, n in zip(values, self.held, strict=True)) / sum(self.held)

        return {
            "best_val_acc": mean("best_val_acc"),
            "val_loss": mean("val_loss"),
            "error": None,
            "seconds": seconds,
            "folds": [{k: r[k] for k in ("best_val_acc", "val_loss", "seconds")} for r in runs],
        }

    def _train(
        self, candidate: Candidate, epochs: int, manifest: Path, fold: int
    ) -> dict[str, Any]:
        recipe = candidate.recipe(
            self.recipe,
            epochs=epochs,
            plots=False,
            keep_state=False,
            val_split=None,
            data_opts={},
            img_size=self.img_size,
            logger=(),
            logger_opts={},
        )
        out = self.work / "run"
        name = f"{candidate.label().replace(' ', '-')}-e{epochs}"
        name += f"-fold{fold}.jsonl" if len(self.folds) > 1 else ".jsonl"
        started = time.perf_counter()
        found: dict[str, Any] = {"best_val_acc": None, "val_loss": None, "error": None}
        try:
            fit = fit_recipe(self.plugins, recipe, manifest, out, overwrite=True, quiet=True)
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


def _count(manifest: Path, split: str) -> int:
    with open(manifest, newline="", encoding="utf-8") as handle:
        return sum(row["split"] == split for row in csv.DictReader(handle))


def _finish(
    out: Path, work: Path, entries: list[dict], holdout: list[list[str]], note: dict[str, Any]
) -> None:
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
