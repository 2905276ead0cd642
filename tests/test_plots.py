"""The plots of a run directory: curves.png, confusion.png, schedule.png."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from helpers import TINY, tlplug
from tlplug import Engine, plotting
from tlplug.builtin import plots
from tlplug.train.stages import Stage, stage_at

PLOTS = ["curves.png", "confusion.png", "schedule.png"]
TINY_ARGS = [
    "--backbone",
    "timm:resnet10t",
    "--no-pretrained",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--workers",
    "0",
]


def record(epoch, stage, name, trainable, biases=(), lr=None, val=True, best=False):
    """A metrics record as epoch_record writes it, with only the keys the plots read."""
    return {
        "epoch": epoch,
        "stage": stage,
        "stage_name": name,
        "trainable_groups": list(trainable),
        "bias_groups": list(biases),
        "train_loss": 2.0 / epoch,
        "train_acc": 0.2 * epoch,
        "val_loss": 2.5 / epoch if val else None,
        "val_acc": 0.15 * epoch if val else None,
        "lr": lr or {"stem": 1e-4, "layer1": 1e-4, "head": 1e-3},
        "is_best": best,
    }


# Four epochs over three groups: the head, then biases below it, then everything; the LR
# decays to 0 at the end (cosine's last epoch); epochs 1 and 3 are not validated.
HISTORY = [
    record(1, 0, "head", ["head"], val=False),
    record(2, 1, "biases+head", ["head"], ["stem", "layer1"], best=True),
    record(
        3,
        2,
        "full",
        ["stem", "layer1", "head"],
        val=False,
        lr={"stem": 5e-5, "layer1": 5e-5, "head": 5e-4},
    ),
    record(
        4,
        2,
        "full",
        ["stem", "layer1", "head"],
        best=True,
        lr={"stem": 0.0, "layer1": 0.0, "head": 0.0},
    ),
]


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.verify()
    assert 1000 <= width <= 1600 and 600 <= height <= 1200, (path.name, image.size)


@pytest.fixture(scope="module")
def resumed(image_folder, tmp_path_factory) -> tuple[Path, list[list[int]]]:
    """A freeze-unfreeze run of two epochs that validates the second only, resumed for a
    third; with the epochs of the history each schedule chart was drawn from."""
    out, drawn = tmp_path_factory.mktemp("plots") / "run", []
    recipe = {
        **TINY,
        "epochs": 2,
        "val_every": 2,
        "schedule": "freeze-unfreeze",
        "keep_state": True,
        "plots": True,
    }
    draw = plotting.draw_schedule

    def spy(history, *args):
        drawn.append([r["epoch"] for r in history])
        return draw(history, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "draw_schedule", spy)
        Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=out, quiet=True)
        Engine.resume(out, entrypoints=False, quiet=True, epochs=3)
    return out, drawn


@pytest.fixture(scope="module")
def run_dir(resumed) -> Path:
    return resumed[0]


def test_a_run_writes_the_three_plots_and_lists_them(run_dir):
    for name in PLOTS:
        assert_png(run_dir / name)
    assert json.loads((run_dir / "summary.json").read_text())["plots"] == PLOTS
    assert not list(run_dir.glob(".*.tmp"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [m["val_acc"] is None for m in metrics] == [True, False, False]


def test_a_resumed_run_draws_every_epoch(resumed):
    assert resumed[1] == [[1, 2], [1, 2, 3]]


def test_the_schedule_grid_of_a_run_is_its_plan(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    plan = [Stage.from_json(s) for s in config["resolved"]["plan"]]
    groups = [g["name"] for g in config["resolved"]["groups"]]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    grid = plotting.schedule_grid(history, groups)
    trains = [[g in plan[stage_at(plan, e - 1)].training for e in grid.epochs] for g in groups]
    assert [[lr is not None for lr in row] for row in grid.lr] == trains
    assert grid.lr[-1] == tuple(r["lr"]["head"] for r in history)


def test_no_plots_writes_none(capsys, image_folder, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = tlplug(
        capsys, "run", "--data", image_folder, *TINY_ARGS, "--epochs", 1, "--no-plots", "--out", out
    )
    assert code == 0, stdout + stderr
    assert not list(out.glob("*.png"))
    assert "plots" not in json.loads((out / "summary.json").read_text())


def fake_run(tmp_path: Path, plots_on: bool = True) -> SimpleNamespace:
    """What the plugin reads of a :class:`tlplug.run.Run`, with a console that keeps lines."""
    said = []
    return SimpleNamespace(
        recipe=SimpleNamespace(plots=plots_on, schedule="bitfit"),
        history=HISTORY,
        resolved=SimpleNamespace(groups=[(g, 1000) for g in ("stem", "layer1", "head")]),
        classes=("a", "b"),
        run_dir=tmp_path,
        console=SimpleNamespace(say=said.append),
        said=said,
    )


SUMMARY = {
    "best_epoch": 4,
    "best_val_acc": 0.6,
    "classes": ["a", "b"],
    "confusion_matrix": [[3, 1], [0, 4]],
}


def test_a_plot_that_fails_is_one_warning_and_the_others_are_written(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("no\nluck")

    monkeypatch.setattr(plotting, "draw_confusion", boom)
    run, summary = fake_run(tmp_path), dict(SUMMARY)
    plots.tlplug_run_end(run=run, summary=summary)
    assert summary["plots"] == ["curves.png", "schedule.png"]
    assert run.said == ["warning: plots not written: confusion.png (RuntimeError: no luck)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "schedule.png"]


def test_a_run_without_validation_has_no_confusion_plot(tmp_path):
    run = fake_run(tmp_path)
    summary = {**SUMMARY, "best_val_acc": None, "confusion_matrix": []}  # --val-split 0
    plots.tlplug_run_end(run=run, summary=summary)
    assert summary["plots"] == ["curves.png", "schedule.png"] and not run.said


def test_plots_off_does_nothing(tmp_path):
    run, summary = fake_run(tmp_path, plots_on=False), dict(SUMMARY)
    plots.tlplug_run_end(run=run, summary=summary)
    assert summary == SUMMARY and not list(tmp_path.iterdir()) and not run.said


def test_importing_the_plugin_loads_neither_matplotlib_nor_torch():
    code = (
        "import sys, tlplug.builtin.plots; "
        "print(sorted({'matplotlib', 'torch'} & set(sys.modules)))"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )


def test_the_schedule_grid_is_the_plan_exactly():
    grid = plotting.schedule_grid(HISTORY)
    assert grid.groups == ("stem", "layer1", "head") and grid.epochs == (1, 2, 3, 4)
    assert grid.lr == (
        (None, 1e-4, 5e-5, 0.0),
        (None, 1e-4, 5e-5, 0.0),
        (1e-3, 1e-3, 5e-4, 0.0),
    )
    assert grid.biases == ((False, True, False, False),) * 2 + ((False,) * 4,)
    assert plotting.schedule_grid(HISTORY, ["head"]).lr == ((1e-3, 1e-3, 5e-4, 0.0),)


def test_stages_and_the_best_epoch_come_from_the_records():
    assert plotting.stage_starts(HISTORY) == [(1, "head"), (2, "biases+head"), (3, "full")]
    assert plotting.best_point(HISTORY) == (4, 0.6)
    assert plotting.best_point(HISTORY[:1]) is None


def test_the_schedule_chart_draws_the_grid():
    fig = plotting.draw_schedule(HISTORY)
    ax = fig.axes[0]
    cells = ax.collections[0].get_array()
    assert cells.mask.tolist() == [[True, False, False, False]] * 2 + [[False] * 4]
    assert sum(1 for p in ax.patches if p.get_hatch()) == 2  # the biases-only cells
    assert [t.get_text() for t in ax.texts].count("0") == 3  # LR 0 is labelled, not hidden
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stem", "layer1", "head"]


def test_the_curves_draw_epochs_without_validation_and_a_zero_lr():
    fig = plotting.draw_curves(HISTORY, "curves")
    loss, acc, lr = fig.axes[:3]
    val = next(line for line in loss.lines if line.get_label() == "val loss")
    assert list(val.get_xdata()) == [2, 4]
    assert any(line.get_label().startswith("best val 0.6000 (epoch 4)") for line in acc.lines)
    assert lr.get_yscale() == "log"
    with pytest.raises(ValueError):
        plotting.draw_curves([])


@pytest.mark.parametrize("classes", [3, 25])
def test_the_confusion_matrix_counts_small_matrices(classes):
    matrix = [[5 if i == j else i % 2 for j in range(classes)] for i in range(classes)]
    fig = plotting.draw_confusion(matrix, [f"class {i}" for i in range(classes)])
    ax = fig.axes[0]
    annotated = classes <= plotting.MAX_ANNOTATED
    assert [t.get_text() for t in ax.texts] == (
        [str(c) for row in matrix for c in row] if annotated else []
    )
    rates = ax.images[0].get_array()
    assert rates[1][1] == pytest.approx(5 / (5 + classes - 1))
    with pytest.raises(ValueError):
        plotting.draw_confusion(matrix, ["just one"])
