"""Transfer mechanics: per-group LRs, weight decay exemptions, BatchNorm policies, LR
schedules across stage changes, stage reports, serialisable schedule state, layer groups."""

from __future__ import annotations

import copy
import json

import attrs
import pytest
import torch

from tlplug import Engine, hookimpl
from tlplug.builtin import lr_schedules
from tlplug.cli import main
from tlplug.errors import OptionError
from tlplug.model.backbone import check_groups
from tlplug.model.transfer import TransferModel
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, choose
from tlplug.recipe import Recipe
from tlplug.run import Progress
from tlplug.train.optimizer import (
    StageScaledScheduler,
    build_optimizer,
    build_scheduler,
    group_lrs,
    lr_multipliers,
)
from tlplug.train.stages import stage_at

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


class Spy:
    """Keeps the run, its starting tensors, and its schedule state after epoch ``keep``."""

    name = "spy"

    def __init__(self, keep: int = 0):
        self.keep, self.run, self.start = keep, None, {}
        self.state, self.optimizer_state = None, None

    @hookimpl
    def tlplug_run_start(self, run):
        self.run = run
        self.start = {k: v.detach().clone() for k, v in run.model.state_dict().items()}

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        if run.epoch == self.keep:
            self.state = json.loads(json.dumps(run.schedule_state()))
            self.optimizer_state = copy.deepcopy(run.optimizer.state_dict())


def fit(tmp_path, image_folder, tiny, *plugins, **recipe):
    tiny.update(recipe)
    return Engine.from_plugins(*plugins, entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )


def group_lrs_list(opt):
    return [g["lr"] for g in opt.param_groups]


def build(name: str, size: int, **recipe):
    recipe = Recipe(backbone=name, pretrained=False, img_size=size, **recipe)
    provider = choose(PluginHost(entrypoints=False), "backbones", name.partition(":")[0], {})
    return build_backbone(provider, recipe)[0], recipe


@pytest.mark.parametrize(
    ("policy", "schedule"),
    [("frozen", "linear-probe"), ("train", "linear-probe"), ("eval", "full")],
)
def test_bn_policy(policy, schedule, image_folder, tmp_path, tiny):
    spy = Spy()
    fit(tmp_path, image_folder, tiny, spy, schedule=schedule, bn_policy=policy, epochs=1)
    after = spy.run.model.state_dict()
    backbone = [k for k in spy.start if k.startswith("backbone.")]
    stats = [k for k in backbone if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in backbone if k.endswith(".weight")]
    assert any(not torch.equal(spy.start[k], after[k]) for k in stats) == (policy == "train")
    assert any(not torch.equal(spy.start[k], after[k]) for k in weights) == (schedule == "full")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["bn_policy"] == config["resolved"]["bn_policy"] == policy
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["bn_policy"] == policy


def test_lr_decay_scales_each_group_by_its_distance_from_the_head(image_folder, tmp_path, tiny):
    result = fit(
        tmp_path,
        image_folder,
        tiny,
        schedule="full",
        lr_schedule="constant",
        lr=0.01,
        lr_decay=0.5,
        epochs=1,
    )
    expected = {g: 0.5 ** (len(GROUPS) - 1 - i) for i, g in enumerate(GROUPS)}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["lr_multipliers"] == expected
    assert result.history[0]["lr"] == pytest.approx({g: 0.01 * m for g, m in expected.items()})


def test_lr_mult_gives_one_multiplier_per_group_stem_to_head():
    recipe = Recipe(lr_mult=(0, 0, 0.1, 0.1, 0.5, 1))
    assert lr_multipliers(GROUPS, recipe) == dict(zip(GROUPS, recipe.lr_mult, strict=True))
    with pytest.raises(OptionError, match="3 multipliers for 6 groups.*stem, layer1"):
        lr_multipliers(GROUPS, Recipe(lr_mult=(0.1, 0.5, 1)))
    with pytest.raises(OptionError, match="not both"):
        Recipe.from_kwargs(lr_mult="0.5,1", lr_decay=0.5)
    with pytest.raises(OptionError, match="lr_decay"):
        Recipe.from_kwargs(lr_decay=1.5)


def test_no_weight_decay_on_biases_norms_and_position_tokens():
    backbone, recipe = build("timm:vit_tiny_patch16_224", 32)
    model = TransferModel(backbone, torch.nn.Linear(backbone.num_features, 2))
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, recipe, lr_multipliers(model.group_names(), recipe))
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed.isdisjoint({"backbone.pos_embed", "backbone.cls_token", "head.bias"})
    assert not [n for n in decayed if n.endswith(".bias") or "norm" in n]
    assert {"backbone.blocks.0.attn.qkv.weight", "head.weight"} <= decayed
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    assert [g["name"] for g in opt.param_groups][::2] == model.group_names()

    everything = build_optimizer(
        model, attrs.evolve(recipe, decay_norm_bias=True), {g: 1.0 for g in model.group_names()}
    )
    assert [g["weight_decay"] for g in everything.param_groups] == [0.01] * len(model.groups)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("lr_schedule", ["constant", "cosine", "onecycle", "step"])
def test_lr_schedules_run_on_across_stage_changes(
    optimizer, lr_schedule, image_folder, tmp_path, tiny
):
    """Each group's LR after every epoch is what the schedule gives for the steps taken
    since the start of the run: no restart, no group left behind, at a stage change."""
    spy = Spy()
    options = {"step_epochs": 1} if lr_schedule == "step" else {}
    result = fit(
        tmp_path,
        image_folder,
        tiny,
        spy,
        schedule="gradual",
        epochs=3,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        lr_schedule_opts=options,
        lr_decay=0.5,
    )
    per_epoch = spy.run.step // 3
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in GROUPS]
    reference = torch.optim.SGD(
        [{"params": [p], "lr": 1e-3 * 0.5 ** (5 - i)} for i, p in enumerate(params)], lr=1e-3
    )
    scheduler = getattr(lr_schedules, lr_schedule)(reference, 3 * per_epoch, per_epoch, **options)
    for record in result.history:
        for _ in range(per_epoch):
            reference.step()
            scheduler.step()
        expected = [g["lr"] for g in reference.param_groups]
        assert [record["lr"][g] for g in GROUPS] == pytest.approx(expected, rel=1e-12)


def test_lp_ft_fine_tunes_at_the_scaled_lr(image_folder, tmp_path, tiny):
    spy = Spy()
    result = fit(
        tmp_path,
        image_folder,
        tiny,
        spy,
        schedule="lp-ft",
        schedule_opts={"probe_epochs": 1, "ft_lr_scale": 0.1},
        lr_schedule="constant",
        lr=0.01,
        epochs=2,
    )
    probe, tune = result.history
    assert probe["lr"]["head"] == 0.01 and probe["lr_scale"] == 1.0
    assert tune["lr_scale"] == 0.1 and tune["trainable_groups"] == GROUPS
    assert tune["stage_lr"] == pytest.approx(dict.fromkeys(GROUPS, 0.001))
    assert tune["lr"] == pytest.approx(dict.fromkeys(GROUPS, 0.001))
    assert set(spy.run.lr_scheduler.scheduler.get_last_lr()) == {0.01}


def test_newly_trainable_groups_warm_up_linearly_to_the_stage_scale():
    def fresh():
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "name": n} for n in "ab"]
        opt = torch.optim.SGD(groups, lr=1.0)
        return opt, StageScaledScheduler(torch.optim.lr_scheduler.ExponentialLR(opt, 0.5), opt)

    opt, scheduler = fresh()
    scheduler.set_scale(0.5, warm=("b",), warmup_steps=3)
    seen = [[g["lr"] for g in opt.param_groups]]
    for _ in range(4):
        opt.step()
        scheduler.step()
        seen.append([g["lr"] for g in opt.param_groups])
        if len(seen) == 3:  # a resumed run continues the ramp where it stopped
            state = scheduler.state_dict()
            opt, scheduler = fresh()
            scheduler.load_state_dict(state)
            for group, lr in zip(opt.param_groups, seen[-1], strict=True):
                group["lr"] = lr  # the optimizer's own state carries its LRs
    base = [0.5**k for k in range(5)]
    ramp = [1 / 4, 2 / 4, 3 / 4, 1, 1]
    expected = [lr for b, r in zip(base, ramp, strict=True) for lr in (0.5 * b, 0.5 * b * r)]
    assert [lr for pair in seen for lr in pair] == pytest.approx(expected, rel=1e-12)


def test_stage_scale_never_compounds_with_a_chainable_scheduler():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = StageScaledScheduler(torch.optim.lr_scheduler.ExponentialLR(opt, 0.5), opt)
    for scale in (1.0, 0.1, 0.1):
        scheduler.set_scale(scale)
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125 * 0.1)
    scheduler.set_scale(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.125)


def test_plateau_steps_per_epoch_and_lowers_every_group():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 0.1)]
    opt = torch.optim.SGD(groups)
    scheduler = StageScaledScheduler(lr_schedules.plateau(opt, 10, 5, patience=0, factor=0.5), opt)
    scheduler.step()
    assert group_lrs_list(opt) == [1.0, 0.1]
    scheduler.epoch_end(1.0)
    scheduler.epoch_end(1.0)
    assert group_lrs_list(opt) == [0.5, 0.05]
    scheduler.set_scale(0.1)
    scheduler.epoch_end(1.0)
    assert group_lrs_list(opt) == pytest.approx([0.025, 0.0025])
    assert scheduler.scheduler.get_last_lr() == pytest.approx([0.25, 0.025])


def test_stage_changes_are_reported(image_folder, tmp_path, tiny, capsys):
    tiny.update(schedule="gradual", epochs=3, lr_decay=0.5)
    result = Engine.from_plugins(entrypoints=False, **tiny).fit(image_folder, out=tmp_path)
    out = capsys.readouterr().out
    assert "stage 2/3 'layer4..head' from epoch 2: training layer4, head (" in out
    assert (
        "starting lr layer4 " in out and "BatchNorm of frozen groups: frozen (--bn-policy)" in out
    )
    for record in result.history:
        assert record["stage_start"] is True
        assert list(record["stage_lr"]) == record["trainable_groups"]
        assert record["stage_lr"]["layer4" if record["epoch"] > 1 else "head"] > 0


@pytest.mark.parametrize("lr_schedule", ["cosine", "onecycle", "step", "plateau"])
def test_schedule_state_is_json_and_continues_exactly(lr_schedule, image_folder, tmp_path, tiny):
    """Restored after epoch 2 into a fresh optimizer and scheduler, the schedule state gives
    the same stage and the same LR for every group in epochs 3 and 4 as the run had."""
    spy = Spy(keep=2)
    result = fit(
        tmp_path,
        image_folder,
        tiny,
        spy,
        schedule="lp-ft",
        lr_schedule=lr_schedule,
        epochs=4,
        lr_decay=0.7,
    )
    run, engine_recipe = spy.run, spy.run.recipe
    engine = Engine.from_plugins(entrypoints=False, **engine_recipe.to_json())
    optimizer = build_optimizer(
        run.model, engine_recipe, lr_multipliers(run.model.group_names(), engine_recipe)
    )
    per_epoch = run.step // 4
    fresh = attrs.evolve(
        run,
        optimizer=optimizer,
        lr_scheduler=build_scheduler(engine.parts.lr_schedule, optimizer, 4, per_epoch),
        history=[],
        progress=Progress(),
    )
    optimizer.load_state_dict(spy.optimizer_state)
    fresh.load_schedule_state(spy.state)
    assert (fresh.stage, fresh.epoch, fresh.step) == (0, 2, 2 * per_epoch)
    for record in result.history[2:]:
        stage = fresh.plan[stage_at(fresh.plan, record["epoch"] - 1)]
        fresh.lr_scheduler.set_scale(stage.lr_scale)
        for _ in range(per_epoch):
            fresh.lr_scheduler.step()
        fresh.lr_scheduler.epoch_end(record["val_loss"])
        assert group_lrs(optimizer) == record["lr"]


def test_norm_only_groups_fold_into_the_stage_below():
    backbone, _ = build("timm:convnext_atto", 32)
    assert [g.name for g in backbone.groups][-2:] == ["stages.2", "stages.3+head.norm"]


def test_max_groups_merges_neighbouring_groups():
    backbone, _ = build("timm:vit_tiny_patch16_224", 32, max_groups=4)
    names = ["stem", "blocks.0..blocks.3", "blocks.4..blocks.7", "blocks.8..blocks.11+norm"]
    assert [g.name for g in backbone.groups] == names
    check_groups(backbone.module, backbone.groups)
    backbone, _ = build("timm:resnet10t", 32, max_groups=1)
    assert [g.name for g in backbone.groups] == ["backbone"]


def test_groups_command_prints_groups_and_counts(capsys):
    main(["groups", "timm:resnet10t", "--max-groups", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "stem",
        "layer1..layer2",
        "layer3..layer4",
        "head",
    ]
    assert lines[0].split()[1] == "26,232"
