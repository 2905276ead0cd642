"""The LR range test: its curve and suggestions, a sweep that leaves the run as it was,
`tlplug lr-find`, and `--lr auto` choosing, recording and reusing a learning rate."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import TINY, tlplug
from tlplug import Engine, OptionError
from tlplug.console import Console
from tlplug.recipe_file import read_recipe_file
from tlplug.rundir.config_record import read_saved_run
from tlplug.search.lr_curve import smooth, suggest, sweep_lrs, valley
from tlplug.search.lr_find import range_test
from tlplug.train.assemble import assemble

TINY_ARGS = ["--no-pretrained", "--img-size", "32", "--batch-size", "8", "--workers", "0"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assembled(folder: Path, out: Path, **recipe):
    """A run of the tiny recipe (changed by ``recipe``), assembled and not trained."""
    engine = Engine.from_plugins(entrypoints=False, **{**TINY, **recipe})
    return assemble(engine.plugins, engine.parts, engine.recipe, folder, out, Console(True))


# --- the curve ---------------------------------------------------------------------------------


def test_learning_rates_grow_geometrically_from_start_to_end():
    lrs = sweep_lrs(1e-7, 10.0, 100)
    assert len(lrs) == 100 and lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert ratios == pytest.approx([ratios[0]] * 99) and ratios[0] > 1


def test_smoothing_is_debiased():
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)  # no pull towards 0 at the start
    assert smooth([1.0, 3.0])[1] == pytest.approx((0.98 * 0.02 + 0.02 * 3) / (1 - 0.98**2))


def test_valley_lands_in_the_long_descent():
    # flat (with noise) up to 1e-5, a long steady fall to 1e-2, then a blow-up
    lrs = sweep_lrs(1e-7, 10.0, 100)
    losses = []
    for i, lr in enumerate(lrs):
        if lr < 1e-5:
            losses.append(2.0 + 0.01 * (-1) ** i)
        elif lr < 1e-2:
            losses.append(2.0 - 1.5 * math.log(lr / 1e-5) / math.log(1e3))
        else:
            losses.append(0.5 + 20 * math.log(lr / 1e-2))
    assert 1e-5 < lrs[valley(losses)] < 1e-2
    picked = suggest(lrs, losses, 100)
    assert 1e-4 < picked["valley"] < 3e-3  # about halfway down, on the log scale
    assert picked["minimum/10"] == pytest.approx(1e-3, rel=0.2)  # a tenth of the lowest point
    assert 1e-5 <= picked["steepest"] < 1e-2


def test_suggestions_read_only_the_finite_curve():
    lrs = sweep_lrs(1e-4, 1.0, 30)
    losses = [3.0 - 0.1 * i for i in range(20)] + [math.nan] * 10
    picked = suggest(lrs, losses, 30)
    assert max(picked.values()) <= lrs[19]
    with pytest.raises(ValueError):
        suggest(lrs, [math.nan] * 30, 30)


# --- the sweep on a run ---------------------------------------------------------------------


def test_the_sweep_leaves_the_run_exactly_as_it_was(image_folder, tmp_path):
    run = assembled(image_folder, tmp_path, lr_decay=0.5, lr_schedule="constant")
    model, optimizer = run.model, run.optimizer
    for param in model.parameters():  # one step, so that the optimizer has state to keep
        param.grad = torch.randn_like(param)
    optimizer.step()
    optimizer.zero_grad()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    saved = {i: {k: v.clone() for k, v in s.items()} for i, s in state["state"].items()}
    groups = [dict(g) for g in state["param_groups"]]
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    seen = []  # each step's LR of every group, as the optimizer had it
    step = optimizer.step

    def watched(*args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return step(*args, **kwargs)

    optimizer.step = watched
    tested = range_test(run, stage=2, start_lr=1e-5, end_lr=1.0, steps=12)
    optimizer.step = step

    assert tested.stage == 2 and tested.inputs == "images" and len(seen) == len(tested.lrs)
    assert tested.lrs == pytest.approx(sweep_lrs(1e-5, 1.0, 12)[: len(tested.lrs)])
    assert len(set(tested.losses)) > 1  # the weights moved while it ran
    mults = [g["lr_mult"] for g in optimizer.param_groups]
    assert len(set(mults)) > 2  # --lr-decay 0.5: every group its own multiplier
    for base, lrs in zip(tested.lrs, seen, strict=True):
        assert lrs == pytest.approx([base * m for m in mults])
    after = optimizer.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert after["state"].keys() == saved.keys()
    for index, values in saved.items():
        assert all(torch.equal(after["state"][index][k], v) for k, v in values.items())
    assert after["param_groups"] == groups
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert (run.epoch, run.stage) == (0, -1)


def test_the_sweep_stops_when_the_loss_diverges(image_folder, tmp_path):
    run = assembled(image_folder, tmp_path, schedule="linear-probe", augment=[])
    tested = range_test(run, start_lr=1e-3, end_lr=1e7, steps=100)
    assert tested.stage == 1 and tested.inputs == "cached features"  # the head, cheaply
    assert tested.stopped in ("diverged", "non-finite") and len(tested.lrs) < 100
    finite = [s for s in tested.smoothed if math.isfinite(s)]
    assert tested.stopped == "non-finite" or finite[-1] > 4 * min(finite)
    assert tested.suggested < tested.lrs[-1]


def test_the_default_stage_is_the_first_whose_lr_matters(image_folder, tmp_path):
    # the head of stage 1 is fit by L-BFGS: stage 2 is swept, after that fit
    run = assembled(image_folder, tmp_path, probe="converge", schedule="freeze-unfreeze")
    tested = range_test(run, steps=6)
    assert tested.stage == 2 and not tested.notes
    # a linear probe fit by L-BFGS uses no LR at all
    run = assembled(image_folder, tmp_path, probe="converge", schedule="linear-probe", augment=[])
    assert range_test(run, steps=6, always=False) is None
    tested = range_test(run, steps=6)
    assert tested.stage == 1 and "no stage of this recipe uses the learning rate" in tested.notes[0]
    with pytest.raises(OptionError, match=r"stage=3: this run's plan has stages 1 \(head\)"):
        range_test(run, stage=3)


# --- the command and --lr auto ------------------------------------------------------------------


def test_lr_find_command_writes_the_curve_and_prints_the_suggestion(image_folder, tmp_path, capsys):
    out = tmp_path / "lrf"
    code, stdout, err = tlplug(
        capsys,
        "lr-find",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        *TINY_ARGS,
        "--steps",
        "15",
        "--start-lr",
        "1e-6",
        "--out",
        out,
    )
    assert code == 0, err
    record = json.loads((out / "lr_find.json").read_text())
    assert record["stage"] == 2 and len(record["lrs"]) == len(record["losses"]) <= 15
    assert len(record["smoothed"]) == len(record["lrs"]) and record["lrs"][0] == 1e-6
    assert set(record["suggestions"]) == {"valley", "minimum/10", "steepest"}
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = stdout.splitlines()
    for name in record["suggestions"]:
        assert any(line.split()[:1] == [name] for line in lines), stdout
    assert lines[-1] == f"suggested --lr {record['suggestions']['valley']:.2g}"


def test_lr_auto_chooses_records_and_reuses_the_lr(image_folder, tmp_path, capsys):
    recipe = {**TINY, "epochs": 1, "lr_schedule": "constant", "schedule": "linear-probe"}
    auto = Engine.from_plugins(entrypoints=False, **recipe, lr="auto")
    result = auto.fit(image_folder, out=tmp_path / "auto")
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    chosen = config["resolved"]["lr"]
    found = json.loads((tmp_path / "auto" / "lr_find.json").read_text())
    assert config["recipe"]["lr"] == "auto" and chosen == found["suggestions"]["valley"]
    assert config["resolved"]["lr_find"]["suggested"] == chosen
    assert f"lr auto: range test over {len(found['lrs'])} steps suggests {chosen:g}" in out
    assert (tmp_path / "auto" / "lr_find.png").is_file()
    assert result.history[0]["lr"]["head"] == chosen  # the first epoch trained at it
    assert result.history[0]["stage_lr"]["head"] == chosen
    # the same run with that LR given: the range test left nothing behind
    given = Engine.from_plugins(entrypoints=False, **recipe, lr=chosen)
    again = given.fit(image_folder, out=tmp_path / "given", quiet=True)
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in result.history]
    # config.json repeats and resumes it with the chosen LR, testing nothing again
    assert read_recipe_file(tmp_path / "auto" / "config.json")[0]["lr"] == chosen
    assert read_saved_run(tmp_path / "auto").recipe.lr == chosen
    resumed = Engine.resume(tmp_path / "auto", entrypoints=False, epochs=2)
    assert "lr auto" not in capsys.readouterr().out
    assert [h["lr"]["head"] for h in resumed.history] == [chosen, chosen]


def test_a_bad_lr_is_one_line(capsys, tmp_path):
    code, _, err = tlplug(capsys, "run", "--lr", "foo", "--no-pretrained", "--out", tmp_path / "r")
    assert code != 0 and err.strip() == "Error: --lr must be a finite number or auto, got 'foo'"
    assert not (tmp_path / "r").exists()
    with pytest.raises(OptionError, match="^lr must be a finite number or auto, got 'fast'$"):
        Engine.from_plugins(entrypoints=False, lr="fast")
    assert Engine.from_plugins(entrypoints=False, lr="auto").recipe.lr == "auto"
    assert Engine.from_plugins(entrypoints=False, lr="3e-4").recipe.lr == 3e-4
