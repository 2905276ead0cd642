"""Successive halving: candidates scored on short runs, the best of them on longer ones.

Pure: the scores come from a callable, so the algorithm is tested on rigged problems. Rung
``r`` scores each surviving candidate once with ``epochs[r]`` epochs and keeps the best
``ceil(n / eta)`` of them (ties go to the earlier candidate); the best of the last rung
wins. The first ``seeded`` candidates skip the short rungs and meet the survivors in the
last one: short runs favour schedules that start fast (a full fine-tune can rank last after
3 of 10 epochs and first after 10), so the leading schedules are compared at full length
and halving picks among the rest. :func:`plan_rungs` picks the candidates, the seeded ones
and the epochs of each rung so the estimated cost fits a budget; :func:`parse_budget`
reads ``--budget``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tlplug.errors import OptionError
from tlplug.recipe import AUTO

MAX_RUNGS = 4
MIN_EPOCHS = 2  # a schedule that unfreezes after its first epoch needs two to show it
BUDGET_HELP = "full runs (3x) or time (600s, 10m, 1h)"
_UNITS = {"x": None, "s": 1.0, "m": 60.0, "h": 3600.0}


@attrs.frozen
class Result:
    """One candidate's score in one rung."""

    rung: int  # from 0
    epochs: int
    score: Any  # higher is better; anything that compares (a float, a tuple)


@attrs.define
class Entry:
    """A candidate, its position in the list it was given, and its results, rung by rung."""

    candidate: Any
    index: int
    results: list[Result] = attrs.field(factory=list)

    @property
    def last(self) -> Result | None:
        """The result of the last rung the candidate reached (None: never scored)."""
        return self.results[-1] if self.results else None


def successive_halving(
    candidates: Sequence[Any],
    score: Callable[[Any, int], Any],
    epochs: Sequence[int],
    eta: int = 3,
    report: Callable[[int, Entry], None] | None = None,
    seeded: int = 0,
) -> list[Entry]:
    """Run the rungs of ``epochs`` over ``candidates`` (the first ``seeded`` only in the
    last rung), calling ``score(candidate, epochs)`` once per candidate and rung and
    ``report(rung, entry)`` after each; return every candidate as a leaderboard: the
    furthest rung first, then by its score there, then by position. The first entry wins."""
    if eta < 2:
        raise ValueError("eta must be at least 2")
    entries = [Entry(candidate, index) for index, candidate in enumerate(candidates)]
    alive = entries[seeded:]
    for rung, count in enumerate(epochs):
        if rung == len(epochs) - 1:
            alive = entries[:seeded] + alive
        for entry in alive:
            entry.results.append(Result(rung, count, score(entry.candidate, count)))
            if report is not None:
                report(rung, entry)
        best = ranked(alive)[: math.ceil(len(alive) / eta)]
        alive = sorted(best, key=lambda e: e.index)  # scored in the order given
    return sorted(ranked(entries), key=lambda e: -e.last.rung if e.last else 1)  # stable


def ranked(entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` by their last score, best first; equal scores keep their positions."""
    by_position = sorted(entries, key=lambda e: e.index)
    scored = [e for e in by_position if e.last is not None]
    return sorted(scored, key=lambda e: e.last.score, reverse=True) + [
        e for e in by_position if e.last is None
    ]


@attrs.frozen
class Plan:
    """How a search spends its budget: the first ``candidates`` take part, the first
    ``seeded`` of them only in the last rung; rung ``r`` trains ``counts[r]`` candidates
    for ``epochs[r]`` epochs; ``cost`` is the estimate in full runs."""

    candidates: int
    epochs: tuple[int, ...]
    counts: tuple[int, ...]
    cost: float
    seeded: int = 0

    def describe(self) -> str:
        """One line: the candidates, each rung's runs and the estimated cost."""
        rungs = ", ".join(
            f"rung {r + 1}: {n} x {e} epoch{'s' if e > 1 else ''}"
            for r, (n, e) in enumerate(zip(self.counts, self.epochs, strict=True))
        )
        straight = ""
        if len(self.epochs) > 1 and self.seeded:
            straight = f" (the first {self.seeded} straight to rung {len(self.epochs)})"
        return f"{self.candidates} candidates{straight}; {rungs}; about {self.cost:.1f} full runs"


def plan_rungs(
    count: int,
    epochs: int,
    budget: float,
    cost: Callable[[int, int], float],
    eta: int = 3,
    cover: int = 0,
    min_epochs: int = MIN_EPOCHS,
) -> Plan | None:
    """The plan for ``count`` candidates (best first) and runs of ``epochs`` epochs that
    fits ``budget`` full runs; ``cost(index, epochs)`` is one candidate's cost in full runs.

    Rung epochs grow by ``eta`` up to the top rung's, from at least ``min_epochs`` (a
    schedule that unfreezes after its first epoch needs two to differ from a probe), and
    the last rung compares at least two candidates (its winner trains again in full).
    Preferred, in this order: a top rung of more epochs; more of the first ``cover``
    candidates in it straight away; more of them in the search at all; more candidates;
    longer first rungs. None when not even two fit."""
    shortest = min(min_epochs, epochs)
    costs: dict[tuple[int, int], float] = {}

    def price(index: int, length: int) -> float:
        if (index, length) not in costs:
            costs[index, length] = cost(index, length)
        return costs[index, length]

    best, best_key = None, None
    tops = {max(shortest, round(epochs / eta**k)) for k in range(MAX_RUNGS)}
    for top in sorted(tops, reverse=True):
        for rungs in range(1, MAX_RUNGS + 1):
            lengths = [max(shortest, round(top / eta ** (rungs - 1 - r))) for r in range(rungs)]
            if any(a >= b for a, b in itertools.pairwise(lengths)):
                continue
            for seeded in range(count + 1) if rungs > 1 else [0]:
                straight = sum(price(i, top) for i in range(seeded))
                for pool in range(2, count - seeded + 1):
                    counts = [math.ceil(pool / eta**r) for r in range(rungs)]
                    if rungs > 1 and counts[-2] == counts[-1]:
                        continue  # the pool is down to one before the last rung
                    counts[-1] += seeded
                    total = straight + _mean(price, seeded, pool, lengths[0]) * pool
                    for n, length in zip(counts[1:-1], lengths[1:-1], strict=True):
                        total += n * _mean(price, seeded, pool, length)
                    if rungs > 1:
                        total += (counts[-1] - seeded) * _mean(price, seeded, pool, top)
                    if total > budget:
                        break
                    start = seeded + pool
                    key = (
                        top,
                        min(seeded if rungs > 1 else start, cover),
                        min(start, cover),
                        start,
                        lengths[0],
                        -total,
                    )
                    if best_key is None or key > best_key:
                        best = Plan(start, tuple(lengths), tuple(counts), total, seeded)
                        best_key = key
    return best


def _mean(price: Callable[[int, int], float], first: int, count: int, length: int) -> float:
    return sum(price(i, length) for i in range(first, first + count)) / max(1, count)


@attrs.frozen
class Budget:
    """What a search may spend: ``runs`` full runs, or ``seconds`` of wall time; neither
    for ``auto``, the search's default, which it sets once it knows its folds."""

    text: str
    runs: float | None = None
    seconds: float | None = None

    @property
    def auto(self) -> bool:
        """Whether the search is to choose the budget."""
        return self.runs is None and self.seconds is None


def parse_budget(text: str) -> Budget:
    """Read ``3x`` (full runs), ``600s``, ``10m``, ``1h`` or ``auto``."""
    if str(text).strip().lower() == AUTO:
        return Budget("auto")
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([xsmh])\s*", str(text), re.I)
    value = float(match.group(1)) if match else 0.0
    if not match or value <= 0:
        raise OptionError(f"--budget {text!r} is not a budget; give {BUDGET_HELP}")
    unit = _UNITS[match.group(2).lower()]
    if unit is None:
        return Budget(str(text).strip(), runs=value)
    return Budget(str(text).strip(), seconds=value * unit)
