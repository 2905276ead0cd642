"""The curve of an LR range test: the learning rates it sweeps, the smoothed loss, the
suggested learning rates, and the test's record, plot and JSON.

Everything here is plain data and arithmetic (no torch), so the command line can import it
for its defaults; matplotlib is imported only to draw. :mod:`tlplug.search.lr_find` runs the test.
The suggestions are fastai's (``Learner.lr_find``), read off the smoothed loss with the
first tenth of the steps and the last five left out, as fastai reads them:

- ``valley`` (the one used): the longest stretch over which the loss keeps falling (a
  longest decreasing subsequence), taken about halfway along it;
- ``minimum/10``: a tenth of the LR where the loss is lowest;
- ``steepest``: where the loss falls fastest per factor of LR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tlplug.plotting import new_figure, save_png
from tlplug.rundir.layout import LR_FIND, write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
BETA = 0.98  # smoothing of the loss, debiased as in Adam
DIVERGED = 4.0  # the test stops once the smoothed loss is this many times its minimum
PLOT, RECORD = LR_FIND
SUGGESTIONS = ("valley", "minimum/10", "steepest")


def sweep_lrs(start: float, end: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``start`` to ``end``, each a constant factor above the
    one before."""
    if steps == 1:
        return [start]
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """The exponential moving average of ``losses``, debiased (a NaN stays NaN after)."""
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**i))
    return smoothed


def valley(losses: Sequence[float]) -> int:
    """The index fastai's valley rule picks: about halfway along the longest decreasing
    subsequence of ``losses`` (the first one, when several are as long)."""
    longest = [1] * len(losses)
    for i in range(len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and longest[j] + 1 > longest[i]:
                longest[i] = longest[j] + 1
    end = max(range(len(losses)), key=lambda i: (longest[i], -i))
    start = end - longest[end]
    third = (end - start) / 3
    return max(0, start + int(third) + int(third / 2))


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> int:
    """The index where the loss falls fastest per unit of log LR (to the next point)."""
    if len(losses) < 2:
        return 0
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(len(losses) - 1)
    ]
    return min(range(len(slopes)), key=slopes.__getitem__)


def suggest(lrs: Sequence[float], smoothed: Sequence[float], steps: int) -> dict[str, float]:
    """Each suggestion's learning rate (two significant digits), from the smoothed losses
    of a test of ``steps`` steps."""
    finite = next((i for i, s in enumerate(smoothed) if not math.isfinite(s)), len(smoothed))
    lo, hi = steps // 10, min(finite, len(smoothed) - 5)
    if hi - lo < 3:  # a test that stopped early: read the whole finite part
        lo, hi = 0, finite
    if hi <= lo:
        raise ValueError("no finite loss to read a learning rate from")
    xs, ys = list(lrs[lo:hi]), list(smoothed[lo:hi])
    lowest = min(range(len(ys)), key=ys.__getitem__)
    picked = {
        "valley": xs[valley(ys)],
        "minimum/10": xs[lowest] / 10,
        "steepest": xs[steepest(xs, ys)],
    }
    return {name: float(f"{lr:.2g}") for name, lr in picked.items()}


@attrs.frozen
class RangeTest:
    """What an LR range test found: the base LRs it tried, the loss after each optimizer
    step (raw and smoothed), the suggestions, the stage swept (from 1) and its inputs
    (``cached features`` or ``images``); ``stopped`` says why it ended early (``diverged``,
    ``non-finite``) or is None; ``notes`` are lines for the user."""

    stage: int
    stage_name: str
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestions: dict[str, float]
    start_lr: float = START_LR
    end_lr: float = END_LR
    num_steps: int = STEPS
    inputs: str = "images"
    stopped: str | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    folder: str | None = None  # where lr_find.png and lr_find.json were written

    @property
    def suggested(self) -> float:
        """The suggestion to use: the valley rule's."""
        return self.suggestions["valley"]

    def summary(self) -> dict[str, Any]:
        """The test without its curve, JSON-ready (config.json's ``resolved.lr_find``)."""
        return {
            "stage": self.stage,
            "stage_name": self.stage_name,
            "suggested": self.suggested,
            "suggestions": self.suggestions,
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "num_steps": self.num_steps,
            "steps_taken": len(self.lrs),
            "inputs": self.inputs,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict[str, Any]:
        """The whole test, JSON-ready (lr_find.json); a non-finite loss is null."""
        return {
            **self.summary(),
            "lrs": list(self.lrs),
            "losses": [_finite(v) for v in self.losses],
            "smoothed": [_finite(v) for v in self.smoothed],
        }

    def lines(self) -> list[str]:
        """What ``tlplug lr-find`` prints: the test, one line per suggestion, the LR."""
        how = {
            "diverged": ", stopped when the loss diverged",
            "non-finite": ", stopped when the loss was not finite",
        }.get(self.stopped or "", "")
        head = (
            f"lr range test: stage {self.stage} ({self.stage_name}) on {self.inputs}, "
            f"{len(self.lrs)} of {self.num_steps} steps from {self.start_lr:g} to "
            f"{self.end_lr:g}{how} ({self.seconds:.1f}s)"
        )
        picks = [f"  {name:<11} {lr:.2g}" for name, lr in self.suggestions.items()]
        where = [f"curve: {Path(self.folder) / PLOT}, {RECORD}"] if self.folder else []
        return [*self.notes, head, *picks, *where, f"suggested --lr {self.suggested:.2g}"]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def draw_range_test(test: RangeTest) -> Figure:
    """Loss against base LR (log scale), raw and smoothed, with the suggestions marked."""
    import numpy as np

    ax = new_figure(8, 5, 100).subplots()
    fig = ax.figure
    lrs, raw, smoothed = (np.array(v, float) for v in (test.lrs, test.losses, test.smoothed))
    ax.plot(lrs, raw, ".", ms=3, color="0.7", label="loss of each step")
    ax.plot(lrs, smoothed, "-", color="C0", label=f"smoothed (β = {BETA})")
    shown = smoothed[np.isfinite(smoothed)]
    if len(shown):
        low, high = shown.min(), shown[: max(1, len(shown) - 5)].max()
        pad = 0.1 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + 2 * pad)
    order = np.argsort(lrs)
    at = np.log(lrs[order])
    finite = np.isfinite(smoothed[order])
    for index, (name, lr) in enumerate(test.suggestions.items()):
        loss = np.interp(np.log(lr), at[finite], smoothed[order][finite]) if finite.any() else 0
        used = name == "valley"
        ax.plot(
            [lr],
            [loss],
            "o",
            ms=10 if used else 7,
            color=f"C{index + 1}",
            zorder=5,
            label=f"{name}: {lr:.2g}" + (" (suggested)" if used else ""),
        )
        if used:
            ax.axvline(lr, color=f"C{index + 1}", linestyle="--", linewidth=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (--lr; each group keeps its multiplier)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(
        f"LR range test: stage {test.stage} ({test.stage_name}) on {test.inputs}, "
        f"{len(test.lrs)} steps"
    )
    return fig


def save_range_test(test: RangeTest, folder: Path) -> list[str]:
    """Write lr_find.json and lr_find.png into ``folder``; return the problems of a plot
    that could not be drawn (the JSON is always written)."""
    write_json(folder / RECORD, test.to_json())
    try:
        save_png(draw_range_test(test), folder / PLOT)
    except Exception as exc:  # a picture is never worth the result
        return [f"{PLOT} not written ({type(exc).__name__}: {exc})".replace("\n", " ")]
    return []
