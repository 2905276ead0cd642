"""Freeze schedules: the plans they make, and what freezing does to tensors (bit for bit)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tlplug import Engine, Stage, TlplugError, hookimpl
from tlplug.builtin import schedules
from tlplug.errors import OptionError
from tlplug.train.freezing import is_bias
from tlplug.train.stages import check_plan, stage_at

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


def trainable(plan):
    return [(s.start, s.trainable) for s in plan]


def test_full_and_linear_probe():
    assert trainable(schedules.full(GROUPS, 3)) == [(0, tuple(GROUPS))]
    assert trainable(schedules.linear_probe(GROUPS, 3)) == [(0, ("head",))]


def test_freeze_unfreeze():
    assert trainable(schedules.freeze_unfreeze(GROUPS, 5, frozen_epochs=2)) == [
        (0, ("head",)),
        (2, tuple(GROUPS)),
    ]
    assert trainable(schedules.freeze_unfreeze(GROUPS, 5, frozen_epochs=0)) == [(0, tuple(GROUPS))]


def test_gradual():
    plan = schedules.gradual(GROUPS, 10, epochs_per_stage=2, groups_per_stage=2)
    assert trainable(plan) == [
        (0, ("head",)),
        (2, ("layer3", "layer4", "head")),
        (4, ("layer1", "layer2", "layer3", "layer4", "head")),
        (6, tuple(GROUPS)),
    ]
    with pytest.raises(OptionError):
        schedules.gradual(GROUPS, 10, epochs_per_stage=0)


def test_milestones():
    plan = schedules.milestones(GROUPS, 20, at=(10, 15), groups_per_stage=1)
    assert trainable(plan) == [
        (0, ("head",)),
        (10, ("layer4", "head")),
        (15, ("layer3", "layer4", "head")),
    ]
    with pytest.raises(OptionError, match="increasing"):
        schedules.milestones(GROUPS, 20, at=(15, 10))


def test_lp_ft_probes_for_half_the_run_then_fine_tunes_everything():
    plan = check_plan(schedules.lp_ft(GROUPS, 6), GROUPS, "lp-ft")
    assert trainable(plan) == [(0, ("head",)), (3, tuple(GROUPS))]
    assert [s.lr_scale for s in plan] == [1.0, 1.0]
    assert [s.warmup for s in plan] == [0.0, 0.0]
    assert [s.name for s in plan] == ["probe", "fine-tune"]
    assert schedules.lp_ft(GROUPS, 6, probe_epochs=2, ft_lr_scale=0.5)[1].lr_scale == 0.5
    with pytest.raises(OptionError, match="probe_epochs"):
        schedules.lp_ft(GROUPS, 6, probe_epochs=0)
    with pytest.raises(OptionError, match="warmup"):
        schedules.lp_ft(GROUPS, 6, warmup=-1.0)


def test_bitfit_fits_the_head_then_trains_it_with_every_other_groups_biases():
    probe, stage = check_plan(schedules.bitfit(GROUPS, 3), GROUPS, "bitfit")
    assert (probe.start, probe.trainable, probe.biases) == (0, ("head",), ())
    assert stage.start == 1 and stage.trainable == ("head",)
    assert stage.biases == tuple(GROUPS[:-1])
    assert stage.name == "biases+head"
    assert Stage.from_json(stage.to_json()) == stage
    (alone,) = check_plan(schedules.bitfit(GROUPS, 1), GROUPS, "bitfit")
    assert alone.start == 0 and alone.biases == tuple(GROUPS[:-1])
    (alone,) = check_plan(schedules.bitfit(GROUPS, 3, probe_epochs=0), GROUPS, "bitfit")
    assert alone.start == 0
    with pytest.raises(OptionError, match="probe_epochs"):
        schedules.bitfit(GROUPS, 3, probe_epochs=-1)


def test_check_plan_names_stages_and_rejects_bad_plans():
    plan = check_plan([Stage(0, ["head"]), Stage(2, ["head", "layer4"])], GROUPS, "s")
    assert [s.name for s in plan] == ["head", "layer4..head"]
    assert plan[1].trainable == ("layer4", "head")
    with pytest.raises(TlplugError, match="unknown group"):
        check_plan([Stage(0, ["layer9"])], GROUPS, "s")
    with pytest.raises(TlplugError, match="stage 2 trains no group"):
        check_plan([Stage(0, ["head"]), Stage(1, [])], GROUPS, "s")
    with pytest.raises(TlplugError, match="first stage must start at epoch 0"):
        check_plan([Stage(1, ["head"])], GROUPS, "s")
    with pytest.raises(TlplugError, match="as trainable and biases"):
        check_plan([Stage(0, ["head"], biases=["head"])], GROUPS, "s")
    with pytest.raises(TlplugError, match="lr_scale"):
        check_plan([Stage(0, ["head"], lr_scale=0)], GROUPS, "s")
    with pytest.raises(TlplugError, match="must increase"):
        check_plan([Stage(0, ["head"]), Stage(0, GROUPS)], GROUPS, "s")
    assert [stage_at(plan, e) for e in range(4)] == [0, 0, 1, 1]


class Snapshots:
    """Records every tensor, the optimizer object and its per-parameter step counts after
    each epoch."""

    name = "snapshots"

    def __init__(self):
        self.states, self.optimizers, self.steps, self.opt_steps = [], [], [], []
        self.groups, self.param_groups = {}, {}

    def _take(self, run):
        self.states.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})
        self.optimizers.append(run.optimizer)
        self.steps.append(run.step)
        state = run.optimizer.state
        self.opt_steps.append(
            {
                name: int(state[p]["step"]) if p in state else 0
                for name, p in run.model.named_parameters()
            }
        )

    @hookimpl
    def tlplug_run_start(self, run):
        self.groups = run.model.state_groups()
        self.param_groups = {p: g.name for g in run.model.groups for p in g.params}
        self._take(run)

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self._take(run)


SCHEDULES = [
    ("linear-probe", {}, 2),
    ("freeze-unfreeze", {"frozen_epochs": 1}, 2),
    ("gradual", {"epochs_per_stage": 1}, 3),
    ("milestones", {"at": "2"}, 3),
    ("lp-ft", {"probe_epochs": 1}, 2),
    ("bitfit", {}, 2),
    ("bitfit", {"probe_epochs": 0}, 1),
]


@pytest.mark.parametrize(
    ("schedule", "options", "epochs"), SCHEDULES, ids=[s[0] for s in SCHEDULES]
)
def test_frozen_groups_stay_bit_identical(schedule, options, epochs, image_folder, tmp_path, tiny):
    """At every stage: frozen tensors (BN statistics too) unchanged, trainable groups
    changed, one optimizer throughout, and each parameter's optimizer state counts exactly
    the steps it trained, kept across stage changes."""
    spy = Snapshots()
    tiny.update(schedule=schedule, schedule_opts=options, epochs=epochs, lr=0.01)
    result = Engine.from_plugins(spy, entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path, quiet=True
    )
    assert all(o is spy.optimizers[0] for o in spy.optimizers)
    trained_steps = dict.fromkeys(spy.param_groups, 0)
    for epoch, record in enumerate(result.history, start=1):
        before, after = spy.states[epoch - 1], spy.states[epoch]
        trains, biases = record["trainable_groups"], record["bias_groups"]
        for key, group in spy.groups.items():
            moving = group in trains or (
                group in biases and (is_bias(key) or key not in spy.param_groups)
            )
            if not moving:
                assert torch.equal(before[key], after[key]), f"epoch {epoch}: frozen {key} changed"
        for group in trains:
            weights = [k for k, g in spy.groups.items() if g == group and k.endswith("weight")]
            assert any(not torch.equal(before[k], after[k]) for k in weights), (
                f"epoch {epoch}: trainable group {group} did not change"
            )
        for group in biases:
            keys = [k for k, g in spy.param_groups.items() if g == group and is_bias(k)]
            assert any(not torch.equal(before[k], after[k]) for k in keys), group
        steps = spy.steps[epoch] - spy.steps[epoch - 1]
        for name, group in spy.param_groups.items():
            if group in trains or (group in biases and is_bias(name)):
                trained_steps[name] += steps
        assert spy.opt_steps[epoch] == trained_steps, f"epoch {epoch}: optimizer state"
    never_trained = any(count == 0 for count in trained_steps.values())
    assert never_trained == (schedule not in ("freeze-unfreeze", "lp-ft"))


def test_linear_probe_keeps_pretrained_backbone_exactly(image_folder, tmp_path, tiny):
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(4)
    state = timm.create_model("resnet10t", num_classes=0).state_dict()
    save_file(state, tmp_path / "w.safetensors")
    tiny.update(schedule="linear-probe", weights=str(tmp_path / "w.safetensors"), epochs=2)
    Engine.from_plugins(entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    saved = load_file(tmp_path / "run" / "model.safetensors")
    for key, value in state.items():
        assert torch.equal(saved["backbone." + key], value), key
