"""Pictures of a run: training curves, the confusion matrix, the freeze schedule as a chart,
and labelled image grids.

The drawing functions take plain data (metrics records as metrics.jsonl holds them, the
summary's confusion matrix) and return a matplotlib ``Figure`` on the Agg canvas: they work
headless and leave pyplot's global state alone. matplotlib is imported inside the functions
that draw, so importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tlplug.rundir.layout import write_atomic

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

Record = dict[str, Any]

STAGE_LINE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}
FROZEN = "#e6e6e6"
MAX_ANNOTATED = 20  # classes; a bigger confusion matrix is drawn without counts
PADDING = 2  # pixels between an image grid's tiles and around it
MIN_TILE = 128  # small images are shown larger (pixels repeated) so their labels fit
LABEL_HEIGHT = 26  # the strip under each row of tiles: two lines of the default font


@attrs.frozen
class ScheduleGrid:
    """The schedule as cells, one row per layer group (stem first), one column per epoch.

    ``lr[g][e]`` is the LR of ``groups[g]`` at the end of epoch ``epochs[e]`` when the
    group trains in that epoch, else None (frozen); ``biases[g][e]`` is True when only the
    group's biases train.
    """

    groups: tuple[str, ...]
    epochs: tuple[int, ...]
    lr: tuple[tuple[float | None, ...], ...]
    biases: tuple[tuple[bool, ...], ...]


def schedule_grid(history: Sequence[Record], groups: Sequence[str] | None = None) -> ScheduleGrid:
    """The :class:`ScheduleGrid` of ``history``; ``groups`` default to the keys of the first
    record's ``lr`` (the optimizer's order, stem to head)."""
    if groups is None:
        groups = list(history[0]["lr"]) if history else []
    lr, biases = [], []
    for group in groups:
        trains = [group in r["trainable_groups"] or group in r["bias_groups"] for r in history]
        lr.append(tuple(r["lr"].get(group) if trains[i] else None for i, r in enumerate(history)))
        biases.append(tuple(group in r["bias_groups"] for r in history))
    epochs = tuple(r["epoch"] for r in history)
    return ScheduleGrid(tuple(groups), epochs, tuple(lr), tuple(biases))


def stage_starts(history: Sequence[Record]) -> list[tuple[int, str]]:
    """``(epoch, stage name)`` for the first epoch of each stage in ``history``."""
    starts, previous = [], None
    for record in history:
        if record["stage"] != previous:
            starts.append((record["epoch"], record["stage_name"]))
            previous = record["stage"]
    return starts


def best_point(history: Sequence[Record]) -> tuple[int, float] | None:
    """``(epoch, val_acc)`` of the last record marked ``is_best`` (the weight average's
    ``ema_val_acc`` when it was the better one), or None when no best epoch was validated."""
    for record in reversed(history):
        acc = record.get("ema_val_acc" if record.get("best_source") == "ema" else "val_acc")
        if record.get("is_best") and acc is not None:
            return record["epoch"], acc
    return None


def draw_curves(history: Sequence[Record], title: str = "Training curves") -> Figure:
    """Loss, accuracy (the best epoch starred) and LR per layer group (log scale) over
    epochs, with the freeze stages marked."""
    if not history:
        raise ValueError("no epochs to draw")
    fig = new_figure(12, 8, 100)
    loss, acc, lr = fig.subplots(3, 1, sharex=True, height_ratios=(1, 1, 0.9))
    for ax, key, label in ((loss, "loss", "loss"), (acc, "acc", "accuracy")):
        for name, style, what in (
            ("train", "o-", "train {}"),
            ("val", "s-", "val {}"),
            ("ema_val", "d--", "val {} (weight average)"),
        ):
            epochs, values = _series(history, f"{name}_{key}")
            if values:
                ax.plot(epochs, values, style, ms=4, label=what.format(label))
        ax.set_ylabel(label)
    best = best_point(history)
    if best:
        acc.plot(
            *best,
            "*",
            ms=16,
            color="gold",
            markeredgecolor="black",
            zorder=5,
            label=f"best val {best[1]:.4f} (epoch {best[0]})",
        )
    _draw_lrs(lr, history)
    for ax in (loss, acc, lr):
        ax.grid(alpha=0.3)
        _mark_stages(ax, history, label=ax is loss)
        entries = len(ax.get_legend_handles_labels()[1])
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            borderaxespad=0,
            fontsize=9 if entries <= 8 else 8,
            ncol=1 + (entries - 1) // 12,
        )
    lr.set_xlabel("epoch")
    _epoch_axis(lr, history)
    fig.suptitle(title)
    return fig


def draw_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """The confusion matrix (rows the true class, columns the predicted one), cells coloured
    by the fraction of the true class's images and annotated with counts (up to
    :data:`MAX_ANNOTATED` classes)."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    if counts.shape != (n, n) or n == 0:
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} classes")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = new_figure(11, 8, 110)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class's images")
    if n <= MAX_ANNOTATED:
        size = max(6.0, min(12.0, 180 / n))
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if rates[row, col] > 0.55 else "black" if count else "0.6"
            ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=size)
    ticks = list(range(0, n, max(1, math.ceil(n / 40))))  # at most 40 labelled classes
    names = [classes[i] for i in ticks]
    size = max(5.0, min(10.0, 240 / len(ticks)))
    long = n > 8 or max(len(c) for c in classes) > 8
    ax.set_xticks(
        ticks,
        names,
        fontsize=size,
        rotation=45 if long else 0,
        ha="right" if long else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def draw_schedule(
    history: Sequence[Record], groups: Sequence[str] | None = None, title: str = "Freeze schedule"
) -> Figure:
    """Layer groups (stem at the bottom) by epoch: a cell is coloured by the group's LR when
    the group trains that epoch (and on small grids labelled with it), hatched when only its
    biases train, grey when frozen; lines mark the stages."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Patch, Rectangle

    grid = schedule_grid(history, groups)
    if not grid.epochs or not grid.groups:
        raise ValueError("no epochs or no layer groups to draw")
    values = np.array([[np.nan if v is None else v for v in row] for row in grid.lr], float)
    positive = values[values > 0]
    hi = float(positive.max()) if positive.size else 1.0
    lo = max(float(positive.min()) if positive.size else hi, hi * 1e-4)
    clipped = bool(np.any(values < lo))
    norm = LogNorm(lo, hi) if lo < hi else LogNorm(lo / 2, hi * 2)
    rows, cols = values.shape
    fig = new_figure(12, min(10.0, max(7.0, 2.5 + 0.45 * rows)), 100)
    ax = fig.subplots()
    ax.set_facecolor(FROZEN)
    x = np.arange(cols + 1) + grid.epochs[0] - 0.5
    edges = {"edgecolors": "white", "linewidth": 0.8} if cols <= 60 else {}
    cells = np.ma.masked_invalid(np.clip(values, lo, None))
    mesh = ax.pcolormesh(x, np.arange(rows + 1) - 0.5, cells, cmap="viridis", norm=norm, **edges)
    fig.colorbar(
        mesh, ax=ax, extend="min" if clipped else "neither", label="learning rate (end of epoch)"
    )
    small = cols <= 12 and rows <= 16
    for (g, e), value in np.ndenumerate(values):
        if grid.biases[g][e]:
            ax.add_patch(
                Rectangle(
                    (x[e], g - 0.5), 1, 1, fill=False, hatch="//", edgecolor="white", linewidth=0
                )
            )
        if np.isfinite(value) and (small or value <= 0):
            shade = norm(max(value, lo))
            box = {"facecolor": mesh.cmap(shade), "edgecolor": "none", "pad": 1.5}
            ax.text(
                x[e] + 0.5,
                g,
                f"{value:.1e}" if value > 0 else "0",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shade < 0.6 else "black",
                bbox=box if grid.biases[g][e] else None,
            )
    ax.set_yticks(range(rows), grid.groups, fontsize=max(6.0, min(10.0, 300 / rows)))
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set(xlabel="epoch", ylabel="layer group", title=title)
    _epoch_axis(ax, history)
    _mark_stages(ax, history, label=True, line={**STAGE_LINE, "color": "black", "linestyle": "-"})
    legend = [
        Patch(facecolor=FROZEN, edgecolor="0.6", label="frozen"),
        Patch(facecolor="#21918c", label="trains (colour: LR)"),
    ]
    if np.any(grid.biases):
        legend.append(
            Patch(facecolor="#21918c", hatch="//", edgecolor="white", label="only the biases train")
        )
    ax.legend(
        handles=legend,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=len(legend),
        frameon=False,
    )
    return fig


def new_figure(width: float, height: float, dpi: int) -> Figure:
    """A headless figure of ``width`` x ``height`` inches, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def draw_reliability(before: Sequence[Record], after: Sequence[Record]) -> Figure:
    """The reliability diagram: accuracy against confidence per bin (rows of
    :func:`tlplug.ship.calibration.reliability`), before and after the temperature, with
    the diagonal a calibrated model follows and the images per bin underneath."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for rows, name, color in ((before, "before", "#d95f02"), (after, "after", "#1b9e77")):
        kept = [r for r in rows if r["images"]]
        top.plot(
            [r["confidence"] for r in kept],
            [r["accuracy"] for r in kept],
            marker="o",
            color=color,
            label=f"{name} temperature",
        )
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability")
    top.legend(loc="upper left", fontsize="small")
    width = 1 / max(1, len(after))
    bottom.bar(
        [r["low"] + width / 2 for r in after],
        [r["images"] for r in after],
        width=width * 0.9,
        color="#1b9e77",
    )
    bottom.set(xlabel="confidence (after)", ylabel="images")
    return fig


def draw_rank(rows: Sequence[Record]) -> Figure:
    """``tlplug rank``'s backbones: LogME against images/s (log scale), each point named."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    speeds, scores = [r["images_per_s"] for r in rows], [r["logme"] for r in rows]
    ax.scatter(speeds, scores, color="#1b9e77")
    middle = math.sqrt(min(speeds) * max(speeds))  # names of the faster half go leftwards
    for row, x, y in zip(rows, speeds, scores, strict=True):
        right = x > middle
        ax.annotate(
            row["backbone"],
            (x, y),
            textcoords="offset points",
            xytext=(-4 if right else 4, 4),
            ha="right" if right else "left",
            fontsize=8,
        )
    ax.margins(x=0.1, y=0.1)
    ax.set(xscale="log", xlabel="images/s (feature extraction)", ylabel="LogME (higher: better)")
    ax.set_title("Backbones: transferability against speed")
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` as a PNG, through a temporary file
    and a rename."""
    write_atomic(path, lambda out: fig.savefig(out, format="png"), mode="wb")


def save_image(image: Image.Image, path: Path) -> None:
    """Write the PIL ``image`` to ``path`` as a PNG, through a temporary file and a rename."""
    write_atomic(path, lambda out: image.save(out, format="PNG"), mode="wb")


def _series(history: Sequence[Record], key: str) -> tuple[list[int], list[float]]:
    """The epochs where ``key`` has a value, and the values."""
    points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _draw_lrs(ax: Axes, history: Sequence[Record]) -> None:
    """One line per distinct LR series (groups with the same LR in every epoch share one);
    an LR of 0, off the log scale, is a triangle on the bottom edge."""
    from matplotlib import colormaps

    epochs, groups = [r["epoch"] for r in history], list(history[0]["lr"])
    series: dict[tuple, list[str]] = {}
    for group in groups:
        series.setdefault(tuple(r["lr"].get(group, math.nan) for r in history), []).append(group)
    tab10, viridis = colormaps["tab10"], colormaps["viridis"]
    cmap = tab10 if len(series) <= 10 else lambda i: viridis(0.9 * i / (len(series) - 1))
    for index, (values, names) in enumerate(series.items()):
        ys = [v if v > 0 else math.nan for v in values]
        ax.plot(epochs, ys, "o-", ms=3, color=cmap(index), label=_group_label(names))
    zeros = sorted({r["epoch"] for r in history if 0 in r["lr"].values()})
    if zeros:
        ax.plot(
            zeros,
            [0] * len(zeros),
            "v",
            ms=8,
            color="0.2",
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            label="LR 0 (off the log scale)",
        )
    if any(v > 0 for values in series for v in values):
        ax.set_yscale("log")
    ax.set_ylabel("learning rate\n(end of epoch)")


def _group_label(names: list[str]) -> str:
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} groups)"


def _mark_stages(ax: Axes, history: Sequence[Record], label: bool, line: dict | None = None):
    """Lines between the stages; with ``label``, each stage's name above its epochs."""
    starts = stage_starts(history)
    for epoch, _ in starts[1:]:
        ax.axvline(epoch - 0.5, **(line or STAGE_LINE))
    if not label:
        return
    ends = [epoch for epoch, _ in starts[1:]] + [history[-1]["epoch"] + 1]
    spans = [(start, end - start, name) for (start, name), end in zip(starts, ends, strict=True)]
    # At 8 pt a character is about 5 px; an axes is about 70% of the figure's width.
    px = 0.7 * ax.figure.get_figwidth() * ax.figure.dpi / len(history)
    tilt = any(width * px < 6 * len(name) + 8 for _, width, name in spans)
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        [start + (width - 1) / 2 for start, width, _ in spans],
        [name for _, _, name in spans],
        fontsize=8,
        rotation=30 if tilt else 0,
        ha="left" if tilt else "center",
        rotation_mode="anchor",
    )
    top.tick_params(length=0)
    top.set_xlabel("stage", fontsize=9)


def _epoch_axis(ax: Axes, history: Sequence[Record]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(history[0]["epoch"] - 0.5, history[-1]["epoch"] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def labelled_grid(images: torch.Tensor, labels: list[str], columns: int) -> Image.Image:
    """``images`` (``(B, 3, S, S)`` in [0, 1]) as tiles, ``columns`` a row, each with its
    label underneath in up to two lines (a ``\n`` or, in a mix, a ``+`` breaks it); tiles
    under :data:`MIN_TILE` pixels are enlarged by a whole factor (pixels repeated, not
    smoothed). The one image grid: augment-preview's and eval's worst images."""
    import torch
    from PIL import Image, ImageDraw, ImageFont
    from torch.nn import functional

    size = images.shape[-1]
    scale = -(-MIN_TILE // size)
    if scale > 1:
        images = functional.interpolate(images, scale_factor=scale, mode="nearest")
    tile = size * scale
    rows = -(-len(images) // columns)
    step_x, step_y = tile + PADDING, tile + PADDING + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * step_x + PADDING, rows * step_y + PADDING), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, (array, label) in enumerate(zip(pixels, labels, strict=True)):
        left = PADDING + (index % columns) * step_x
        top = PADDING + (index // columns) * step_y
        canvas.paste(Image.fromarray(array), (left, top))
        for line_no, line in enumerate(_lines(label, draw, font, tile)):
            draw.text((left, top + tile + 2 + 12 * line_no), line, fill="black", font=font)
    return canvas


def _lines(label: str, draw: Any, font: Any, width: int) -> list[str]:
    """``label`` in at most two lines that fit ``width`` pixels (broken at a ``\n``, or
    a mix at its ``+``)."""
    parts = label.split("\n") if "\n" in label else label.split("+")
    lines = (
        [parts[0], ("\n" if "\n" in label else "+").join(parts[1:])] if len(parts) > 1 else [label]
    )
    fitted = []
    for line in lines[:2]:
        while line and draw.textlength(line, font=font) > width:
            line = line[:-2] + "…"
        fitted.append(line)
    return fitted
