"""The unfreeze is stable by construction (tlplug.train.handover), and a stage whose first epoch
explodes is rolled back and trained again at a tenth of the LR (tlplug.train.rollback).

The "pretrained" weights here are a random resnet10t whose BatchNorm statistics describe
other images than the training set (shifted means, larger variances), as pretrained
statistics do on a new task: frozen layers normalise with them, training layers with each
batch's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import TINY
from tlplug import Engine, Stage, hookimpl

FU = {**TINY, "probe": "converge", "precision": "fp32", "augment": ["flip"], "epochs": 3}


@pytest.fixture(scope="module")
def foreign_stats(tmp_path_factory) -> Path:
    """resnet10t weights whose BatchNorm statistics do not fit the test images."""
    torch.manual_seed(0)
    state = timm.create_model("resnet10t").state_dict()
    for key in state:
        if key.endswith("running_mean"):
            state[key] = state[key] + 0.5
        elif key.endswith("running_var"):
            state[key] = state[key] * 3.0
    path = tmp_path_factory.mktemp("weights") / "foreign.safetensors"
    save_file(state, path)
    return path


class Steps:
    """Records each training step's loss and, when a stage starts, the model's state."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []
        self.at_start: dict[int, dict[str, torch.Tensor]] = {}

    @hookimpl
    def tlplug_stage_start(self, run, stage):
        self.at_start[run.stage] = {k: v.clone() for k, v in run.model.state_dict().items()}

    @hookimpl
    def tlplug_step_end(self, run, step):
        self.losses.append((run.stage, step.loss))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_first_step_after_the_probe_sees_the_features_the_head_was_fit_to(
    foreign_stats, image_folder, tmp_path
):
    """Before the first fine-tuning step, the newly trained BatchNorm layers hold the
    statistics of the training images and the head is fit again on what they give: the
    first step's loss is the probe's, not several times it (0.6 -> 3.2 without this)."""
    steps = Steps()
    engine = Engine.from_plugins(steps, entrypoints=False, **FU, weights=str(foreign_stats))
    result = engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    probe, unfreeze = records(result.run_dir)[:2]
    handover = unfreeze["handover"]
    assert handover["norm_layers"] == 14 and handover["images"] == 36
    refit = handover["probe"]
    first_step = next(loss for stage, loss in steps.losses if stage == 1)
    # One batch of 8 in training mode is noisier than the refit's loss over every image.
    assert first_step < 3 * refit["loss"] + 0.1
    assert first_step < 2 * probe["train_loss"] + 0.1
    # The probe stage's own head is the best probe (kept as its epoch); the refit one is
    # the start of fine-tuning.
    assert probe["probe"]["l2"] <= refit["l2"]
    before, after = steps.at_start[0], steps.at_start[1]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("head.") or "running" in k or "batches" in k for k in moved)


def test_only_the_newly_trained_groups_get_new_statistics(foreign_stats, image_folder, tmp_path):
    steps = Steps()
    recipe = {**FU, "schedule": "gradual", "weights": str(foreign_stats)}
    result = Engine.from_plugins(steps, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    before, after = steps.at_start[0], steps.at_start[1]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k.split(".")[1] for k in moved if k.startswith("backbone.")} == {"layer4"}
    assert any(k.startswith("head.") for k in moved)  # fit again
    for key, value in before.items():
        if key.startswith("backbone.") and not key.startswith("backbone.layer4."):
            assert torch.equal(value, after[key]), key
    assert records(result.run_dir)[1]["handover"]["norm_layers"] == 3


def test_a_linear_probe_keeps_the_pretrained_statistics_bit_for_bit(
    foreign_stats, image_folder, tmp_path
):
    recipe = {**FU, "schedule": "linear-probe", "weights": str(foreign_stats)}
    result = Engine.from_plugins(entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    from safetensors.torch import load_file

    saved, given = load_file(result.run_dir / "model.safetensors"), load_file(foreign_stats)
    for key, value in given.items():
        if not key.startswith("fc."):
            assert torch.equal(saved[f"backbone.{key}"], value), key


class Hot:
    """A schedule plugin: the head, then every group at ``scale`` times the LR."""

    def __init__(self, scale: float):
        self.scale = scale

    @hookimpl
    def tlplug_register_schedules(self, register):
        def hot(groups, epochs):
            """The head, then every group at a scaled LR."""
            return [Stage(0, groups[-1:]), Stage(1, groups, lr_scale=self.scale)]

        register("hot", hot)


HOT = {**TINY, "schedule": "hot", "epochs": 3, "precision": "fp32"}


def test_an_exploding_first_epoch_is_rolled_back_and_trained_again_at_a_tenth(
    image_folder, tmp_path, capsys
):
    """At 300x the LR the unfreeze's loss goes to many times the probe's; the rollback
    trains the stage from its start at 30x: the same run, bit for bit, as one asked for
    30x (which does not explode)."""
    exploded = Engine.from_plugins(Hot(300.0), entrypoints=False, **HOT).fit(
        image_folder, out=tmp_path / "hot", quiet=False
    )
    out = capsys.readouterr().out
    assert "stage 2 (full): the loss went to " in out
    assert "rolled back to the stage's start, training again at 0.1x the learning rate" in out
    calm = Engine.from_plugins(Hot(30.0), entrypoints=False, **HOT).fit(
        image_folder, out=tmp_path / "calm", quiet=True
    )
    hot, cool = records(exploded.run_dir), records(calm.run_dir)
    assert hot[1]["rolled_back"]["lr_factor"] == 0.1 and "rolled_back" not in cool[1]
    assert hot[1]["rolled_back"]["why"].startswith("the loss went to ")
    for a, b in zip(hot, cool, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == b[key]
    from safetensors.torch import load_file

    ours, theirs = (load_file(r.run_dir / "model.safetensors") for r in (exploded, calm))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_non_finite_first_epoch_is_rolled_back_once_then_stops_the_run(image_folder, tmp_path):
    from tlplug.train.step import Diverged

    engine = Engine.from_plugins(Hot(1e30), entrypoints=False, **HOT)
    with pytest.raises(Diverged, match="the loss became"):
        engine.fit(image_folder, out=tmp_path / "nan", quiet=True)
    assert (tmp_path / "nan" / "model.safetensors").is_file()  # the probe's epoch is kept
