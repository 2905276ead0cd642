"""The installed plugin through tlplug itself: entry point, CLI, Engine.fit and run files."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import read_run
from tlplug import Engine, OptionError, hookimpl
from tlplug.testing import run_cli as cli
from tlplug.train.interrupt import Interrupted


class Drift:
    """A lifecycle plugin measuring how far the backbone moved from its starting weights."""

    name = "drift"

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}
        self.distance = None

    @hookimpl
    def tlplug_run_start(self, run):
        self.start = {n: p.detach().clone() for n, p in run.model.backbone.named_parameters()}

    @hookimpl
    def tlplug_run_end(self, run, summary):
        params = dict(run.model.backbone.named_parameters())
        self.distance = sum(
            (params[n].detach() - p0).pow(2).sum().item() for n, p0 in self.start.items()
        )


def test_the_entry_point_is_installed_and_lists_every_regularizer(capsys):
    points = [p for p in metadata.entry_points(group="tlplug") if p.name == "regularize"]
    assert [p.value for p in points] == ["tlplug_regularize"]
    code, out, _ = cli(capsys, "list", "regularizers")
    assert code == 0
    for line in ("l2-sp ", "alpha=0.1 (float), beta=0.01 (float)", "bss ", "eta=0.001"):
        assert line in out
    assert "delta " in out and "layers=" in out
    code, out, _ = cli(capsys, "plugins")
    assert "regularize (tlplug-regularize 0.1.0) loaded" in out


def test_all_three_train_end_to_end_and_are_recorded(image_folder, tiny, tmp_path):
    engine = Engine.from_plugins(
        regularizer=("l2-sp", "bss", "delta"),
        regularizer_opts={"l2-sp": {"alpha": 0.01}, "bss": {"k": 2}},
        schedule="full",
        **tiny,
    )
    result = engine.fit(image_folder, epochs=1, out=tmp_path / "run", quiet=True)
    config, records = read_run(result.run_dir)
    assert config["resolved"]["regularizers"] == [
        {"name": "l2-sp", "plugin": "regularize", "options": {"alpha": 0.01, "beta": 0.01}},
        {"name": "bss", "plugin": "regularize", "options": {"eta": 0.001, "k": 2}},
        {
            "name": "delta",
            "plugin": "regularize",
            "options": {"alpha": 1.0, "beta": 0.01, "layers": []},
        },
    ]  # options as resolved: the ones left at their defaults too
    assert config["tlplug-regularize"]["penalties"] == [
        {"name": "l2-sp", "alpha": 0.01, "beta": 0.01},
        {"name": "bss", "eta": 0.001, "k": 2},
        {
            "name": "delta",
            "alpha": 1.0,
            "beta": 0.01,
            "layers": ["act1", "layer1", "layer2", "layer3", "layer4"],
        },
    ]
    (record,) = records
    assert record["feature_cache"] is False
    assert set(record["penalty"]) == {"l2-sp", "bss", "delta"}
    assert all(value > 0 for value in record["penalty"].values())
    assert record["train_loss"] > sum(record["penalty"].values())


def test_on_a_frozen_backbone_the_head_is_fit_by_the_converged_probe(image_folder, tiny, tmp_path):
    """Each penalty is constant there or an L2 on the head, which the probe's own L2 replaces;
    delta, which needs the images where the backbone trains, keeps the feature cache too."""
    for name in ("bss", "l2-sp", "delta"):
        recipe = {**tiny, "probe": "converge", "schedule": "linear-probe"}
        engine = Engine.from_plugins(regularizer=(name,), **recipe)
        result = engine.fit(image_folder, out=tmp_path / name, quiet=True)
        _, records = read_run(result.run_dir)
        assert [r["feature_cache"] for r in records] == [True, True]
        assert "probe" in records[0]  # fit by L-BFGS, not epoch by epoch
        assert records[0]["penalty"] == {name: None}  # no training step to add it to


def test_delta_turns_the_prefix_cache_off(image_folder, tiny, tmp_path):
    recipe = {**tiny, "probe": "converge", "schedule": "gradual"}
    engine = Engine.from_plugins(regularizer=("delta",), **recipe)
    result = engine.fit(image_folder, epochs=2, out=tmp_path / "run", quiet=True)
    _, records = read_run(result.run_dir)
    assert [r["feature_cache"] for r in records] == [True, False]
    assert records[1]["prefix_cache"] is None and records[1]["penalty"]["delta"] > 0


def test_strong_l2sp_keeps_the_backbone_near_its_start(image_folder, tiny, tmp_path):
    common = dict(tiny, schedule="full", optimizer="sgd", lr=0.05, weight_decay=0.0)
    distances = {}
    for alpha in (0.0, 15.0):
        drift = Drift()
        engine = Engine.from_plugins(
            drift, regularizer=("l2-sp",), regularizer_opts={"l2-sp": {"alpha": alpha}}, **common
        )
        engine.fit(image_folder, out=tmp_path / f"alpha-{alpha}", quiet=True)
        distances[alpha] = drift.distance
    assert distances[0.0] > 0
    assert distances[15.0] < 0.5 * distances[0.0]


def test_a_bad_option_stops_the_run_with_one_line(image_folder, tiny, tmp_path, capsys):
    engine = Engine.from_plugins(
        regularizer=("l2-sp",), regularizer_opts={"l2-sp": {"alpha": -1}}, **tiny
    )
    with pytest.raises(OptionError, match=r"^regularizer 'l2-sp' option 'alpha' must be at"):
        engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    code, _, err = cli(
        capsys,
        "run",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        32,
        "--workers",
        0,
        "--epochs",
        1,
        "--out",
        tmp_path / "cli",
        "--regularizer",
        "bss",
        "--regularizer-opt",
        "bss.k=0",
    )
    assert code != 0
    assert "regularizer 'bss' option 'k' must be at least 1, got 0" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cli").exists()


class StopAfterFirstEpoch:
    """A lifecycle plugin that asks the run to stop (SIGTERM, as a user would) after epoch 1
    and keeps the backbone's starting weights."""

    name = "stop-after-first-epoch"

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}

    @hookimpl
    def tlplug_run_start(self, run):
        self.start = {n: p.detach().clone() for n, p in run.model.backbone.named_parameters()}

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        if run.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class CheckAnchor:
    """A lifecycle plugin that evaluates the l2-sp penalty when a resumed run starts."""

    name = "check-anchor"

    def __init__(self):
        self.seen: tuple[float, dict[str, torch.Tensor]] | None = None

    @hookimpl
    def tlplug_run_start(self, run):
        (penalty,) = run.loss.penalties
        weights = {n: p.detach().clone() for n, p in run.model.backbone.named_parameters()}
        self.seen = (penalty.backbone_term().item(), weights)


def test_a_resumed_run_keeps_pulling_toward_the_original_start(image_folder, tiny, tmp_path):
    stopper = StopAfterFirstEpoch()
    engine = Engine.from_plugins(
        stopper, regularizer=("l2-sp",), schedule="full", weight_decay=0.0, **tiny
    )
    with pytest.raises(Interrupted):
        engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    check = CheckAnchor()
    Engine.resume(tmp_path / "run", check, quiet=True)
    term, resumed = check.seen
    expected = sum((resumed[n] - p0).pow(2).sum().item() for n, p0 in stopper.start.items())
    assert expected > 0  # epoch 1 moved the weights; the penalty sees how far
    assert term == pytest.approx(expected, rel=1e-4)


def test_in_two_processes_the_penalties_train_as_in_one(image_folder, tmp_path):
    # L2-SP and DELTA do not depend on how a batch is split: each process adds them to its
    # share's loss and the averaged gradients are one process's. Rank 0 records the plugin.
    args = [
        "run",
        "--data",
        str(image_folder),
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "2",
        "--schedule",
        "full",
        "--regularizer",
        "l2-sp",
        "--regularizer",
        "delta",
        "--precision",
        "fp32",
        "--bn-policy",
        "eval",
        "--keep-state",
        "--no-plots",
        "--quiet",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    for out, more in (("one", []), ("two", ["--nproc", "2"])):
        done = subprocess.run(
            [sys.executable, "-m", "tlplug", *args, "--out", str(tmp_path / out), *more],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Warning" not in done.stderr
    (config_one, one), (config_two, two) = (read_run(tmp_path / d) for d in ("one", "two"))
    assert [r["val_acc"] for r in two] == [r["val_acc"] for r in one]
    assert config_two["tlplug-regularize"] == config_one["tlplug-regularize"]
    weights = [load_file(tmp_path / d / "resume.safetensors") for d in ("one", "two")]
    for key, value in weights[0].items():
        if key.startswith("model."):
            torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-4)
