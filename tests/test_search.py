"""tlplug search and --schedule auto: successive halving keeps the right candidates on rigged
problems, budgets parse and plan, and one tiny real search trains its winner."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from helpers import TINY, tlplug
from tlplug import Engine
from tlplug.errors import OptionError
from tlplug.plugins.host import PluginHost
from tlplug.search.candidates import FEW_SHOT, FEW_SHOT_PRIORITY, PRIORITY, searchable
from tlplug.search.driver import search_and_fit
from tlplug.search.halving import Plan, parse_budget, plan_rungs, successive_halving
from tlplug.search.leaderboard import tie_warning

# Candidate -> (score after many epochs, how much it lacks after one): score = final - lag/e.
# "sprinter" leads after one epoch but ends low; "stayer" starts slowly and ends best of
# those that survive the first rung; "sleeper" would end best of all but starts last.
RIGGED = {
    "sprinter": (0.70, 0.00),
    "stayer": (0.95, 0.30),
    "steady": (0.85, 0.25),
    "meh": (0.60, 0.10),
    "sleeper": (0.99, 0.60),
    "poor": (0.40, 0.05),
    "worse": (0.30, 0.05),
    "worst": (0.20, 0.05),
    "last": (0.10, 0.05),
}


def rigged_score(calls):
    def score(candidate, epochs):
        calls.append((candidate, epochs))
        final, lag = RIGGED[candidate]
        return final - lag / epochs

    return score


def test_halving_keeps_the_best_third_of_each_rung_and_ranks_everyone():
    calls, reported = [], []
    board = successive_halving(
        list(RIGGED),
        rigged_score(calls),
        [1, 3, 9],
        eta=3,
        report=lambda rung, entry: reported.append((rung, entry.candidate)),
    )
    # Rung 1 (1 epoch): sprinter 0.70, stayer 0.65, steady 0.60 lead. Rung 2 (3 epochs):
    # stayer 0.85, steady 0.77, sprinter 0.70 -> stayer alone goes on and wins.
    assert [c for c, e in calls if e == 1] == list(RIGGED)
    assert [c for c, e in calls if e == 3] == ["sprinter", "stayer", "steady"]
    assert [c for c, e in calls if e == 9] == ["stayer"]
    assert len(calls) == 9 + 3 + 1 and sum(e for _, e in calls) == 9 * 1 + 3 * 3 + 1 * 9
    assert reported == [(r, c) for c, e in calls for r in [{1: 0, 3: 1, 9: 2}[e]]]
    assert board[0].candidate == "stayer" and len(board[0].results) == 3
    assert [e.candidate for e in board[1:3]] == ["steady", "sprinter"]
    assert {e.candidate for e in board[3:]} == set(RIGGED) - {"stayer", "steady", "sprinter"}
    assert [e.candidate for e in board[3:5]] == ["meh", "sleeper"]  # 0.50 before 0.39
    assert [len(e.results) for e in board] == [3, 2, 2] + [1] * 6


def test_halving_breaks_ties_by_order_and_takes_tuples():
    board = successive_halving(["a", "b", "c", "d"], lambda c, e: (1.0, -len(c)), [1, 2], eta=2)
    assert [e.candidate for e in board] == ["a", "b", "c", "d"]
    assert [len(e.results) for e in board] == [2, 2, 1, 1]
    with pytest.raises(ValueError):
        successive_halving(["a"], lambda c, e: 0.0, [1], eta=1)


def test_halving_meets_the_seeded_candidates_in_the_last_rung():
    calls = []
    board = successive_halving(list(RIGGED), rigged_score(calls), [1, 3, 9], eta=3, seeded=2)
    # sprinter and stayer wait for the last rung; of the other 7, steady (0.60), meh (0.50)
    # and sleeper (0.39) pass rung 1, sleeper (0.79) rung 2, and it wins the last (0.92).
    assert [c for c, e in calls if e == 1] == list(RIGGED)[2:]
    assert [c for c, e in calls if e == 3] == ["steady", "meh", "sleeper"]
    assert [c for c, e in calls if e == 9] == ["sprinter", "stayer", "sleeper"]
    assert [e.candidate for e in board[:5]] == ["sleeper", "stayer", "sprinter", "steady", "meh"]
    assert [e.last.rung for e in board] == [2, 2, 2, 1, 1] + [0] * 4


def test_a_tie_at_the_top_is_reported_with_the_held_out_size():
    def entry(schedule, acc, epochs=10, error=None):
        return {"schedule": schedule, "best_val_acc": acc, "epochs": epochs, "error": error}

    tied = [
        entry("gradual", 1.0),
        entry("lp-ft", 1.0),
        entry("full", 1.0, epochs=3),
        entry("bitfit", None, error="boom"),
        entry("full", 0.9),
    ]
    warning = tie_warning(tied, 12, "the strongest usual choices first")
    assert "2 candidates tie at held-out accuracy 1.0000 on 12 images (gradual, lp-ft)" in warning
    assert "order (the strongest usual choices first) chose gradual" in warning
    assert tie_warning([entry("gradual", 1.0), entry("lp-ft", 0.9)], 12, "any") is None


def test_plan_prefers_full_length_and_halving_runs_it():
    def cost(index, epochs):  # a third of the candidates train the head only: cheaper
        return epochs / 10 * (0.5 if index % 3 == 1 else 1.0)

    # 3 full runs buy a grid of 3 candidates at the full 10 epochs: short runs mislead.
    assert plan_rungs(21, 10, 3.0, cost, cover=6) == Plan(3, (10,), (3,), 2.5)
    # 8 buy the 6 leading ones at 10 epochs, and halving for 8 more, whose best joins them.
    plan = plan_rungs(21, 10, 8.0, cost, eta=3, cover=6)
    assert (plan.candidates, plan.seeded, plan.epochs, plan.counts) == (
        14,
        6,
        (2, 3, 10),
        (8, 3, 7),
    )
    assert plan.cost <= 8.0 and "the first 6 straight to rung 3" in plan.describe()
    calls = []
    successive_halving(
        list(range(plan.candidates)),
        lambda c, e: calls.append(e) or -c,
        plan.epochs,
        eta=3,
        seeded=plan.seeded,
    )
    assert [calls.count(e) for e in plan.epochs] == list(plan.counts)
    assert plan_rungs(21, 10, 50.0, cost, cover=6).counts == (21,)  # enough for all, in full
    assert plan_rungs(21, 10, 1.0, cost, cover=6) == Plan(3, (3,), (3,), 0.75)
    assert plan_rungs(21, 10, 0.1, cost) is None  # not even two candidates for 2 epochs
    plain = plan_rungs(21, 10, 6.0, cost, cover=0)  # no leading candidates: plain halving
    assert (plain.epochs, plain.counts, plain.seeded) == ((2, 3, 10), (17, 6, 2), 0)
    quick = plan_rungs(21, 10, 6.0, cost, cover=0, min_epochs=1)
    assert (quick.epochs, quick.counts) == ((1, 3, 10), (21, 7, 3))


@pytest.mark.parametrize(
    "text, runs, seconds",
    [
        ("3x", 3.0, None),
        ("1.5X", 1.5, None),
        ("600s", None, 600.0),
        ("10m", None, 600.0),
        (" 1h ", None, 3600.0),
        ("auto", None, None),
    ],
)
def test_budget_parses(text, runs, seconds):
    budget = parse_budget(text)
    assert (budget.runs, budget.seconds) == (runs, seconds)
    assert budget.auto == (text == "auto")


@pytest.mark.parametrize("text", ["3", "x", "0x", "-1x", "10 minutes", ""])
def test_bad_budget_is_an_option_error(text):
    with pytest.raises(OptionError, match="--budget .* full runs .*600s"):
        parse_budget(text)


def test_cli_bad_budget_is_one_line(capsys):
    code, out, err = tlplug(capsys, "search", "--budget", "lots")
    assert code != 0 and not out
    assert err.count("\n") == 1 and "--budget 'lots' is not a budget" in err
    code, out, err = tlplug(capsys, "search", "--folds", "many")
    assert code != 0 and not out
    assert err.count("\n") == 1 and "--folds 'many' is not a number of folds" in err


def test_search_trains_the_winner_on_the_real_split(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [
        "--backbone",
        TINY["backbone"],
        "--no-pretrained",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--no-plots",
        "--probe",
        "epochs",
    ]
    code, printed, err = tlplug(
        capsys,
        "search",
        "--data",
        image_folder,
        "--out",
        out,
        "--budget",
        "2x",
        "--folds",
        "1",
        "--schedules",
        "full,linear-probe",
        *flags,
    )
    assert code == 0, err
    assert "search: 2 candidates; rung 1: 2 x 1 epoch" in printed
    assert "rung 1/1: full lr 0.001, 1 epoch: held-out acc" in printed
    assert "leaderboard" in printed and "winner: " in printed
    entries = json.loads((out / "leaderboard.json").read_text())
    assert {(e["schedule"], e["lr"]) for e in entries} == {("full", 1e-3), ("linear-probe", 1e-3)}
    assert all(e["best_val_acc"] is not None and e["rungs"] for e in entries)
    assert entries[0]["winner"] and entries[0]["rank"] == 1
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["schedule"] for r in rows] == [e["schedule"] for e in entries]
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["schedule"] == entries[0]["schedule"]
    assert config["search"]["winner"]["schedule"] == entries[0]["schedule"]
    assert (out / "model.safetensors").is_file() and (out / "summary.json").is_file()
    held = list(csv.DictReader((out / "search" / "holdout.csv").open()))
    val = {str(Path(r["path"]).resolve()) for r in csv.DictReader((out / "val_images.csv").open())}
    assert held and not {r["path"] for r in held} & val
    assert {r["split"] for r in held} == {"train", "val"}
    assert all("/train/" in r["path"] for r in held)
    assert len(list((out / "search" / "metrics").glob("*.jsonl"))) == 2
    assert not list(tmp_path.glob(".run.search-*"))  # the work directory is gone
    assert not list(tmp_path.rglob("*.safetensors"))[1:]  # only the winner's weights


@pytest.mark.slow  # a rank of two backbones, then a search and a run
def test_search_over_several_backbones_ranks_them_first(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = tlplug(
        capsys,
        "search",
        "--data",
        image_folder,
        "--out",
        out,
        "--backbone",
        "timm:resnet10t",
        "--backbone",
        "timm:mobilenetv3_small_050",
        "--cache-dir",
        tmp_path / "features",
        *[
            "--budget",
            "2x",
            "--folds",
            "1",
            "--schedules",
            "full,linear-probe",
            "--epochs",
            "1",
            "--no-plots",
        ],
        *[
            "--no-pretrained",
            "--img-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--probe",
            "epochs",
        ],
    )
    assert code == 0, err
    ranked = json.loads((out / "search" / "rank.json").read_text())["backbones"]
    assert {r["backbone"] for r in ranked} == {"timm:resnet10t", "timm:mobilenetv3_small_050"}
    config = json.loads((out / "config.json").read_text())
    ranking = config["search"]["ranking"]
    assert ranking["kept"] == ranked[0]["backbone"] == config["recipe"]["backbone"]
    assert [r["backbone"] for r in ranking["backbones"]] == [r["backbone"] for r in ranked]
    assert "ranking rung (LogME):" in printed and f"kept: {ranked[0]['backbone']}" in printed
    assert len(json.loads((out / "leaderboard.json").read_text())) == 2
    assert (out / "search" / "rank.png").is_file() and (out / "model.safetensors").is_file()
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 2


@pytest.mark.slow
def test_a_time_budget_times_a_candidate_first_and_keeps_its_result(image_folder, tmp_path, capsys):
    engine = Engine.from_plugins(entrypoints=False, **{**TINY, "epochs": 1, "schedule": "auto"})
    search_and_fit(
        engine.plugins,
        engine.recipe,
        image_folder,
        budget="1h",
        schedules=["linear-probe"],
        out=tmp_path / "run",
    )
    printed = capsys.readouterr().out
    assert "timing: linear-probe lr 0.001 for 1 epoch(s) took" in printed
    run = tmp_path / "run"
    entries = json.loads((run / "leaderboard.json").read_text())
    assert len(entries) == 3  # 3 LRs (no LR decay: the backbone never trains); an hour buys all
    assert printed.count("rung 1/1: linear-probe lr 0.001, 1 epoch:") == 1  # timed run counts
    # 36 training images: a fifth is 7, too few to rank on, so 5 folds score every image once.
    assert "5-fold cross-validation on 36 training images" in printed
    assert "scored on the 36 images its folds hold out (8/7/7/7/7)" in printed
    assert len(list((run / "search" / "metrics").glob("*-fold[1-5].jsonl"))) == 3 * 5
    held = list(csv.DictReader((run / "search" / "holdout.csv").open()))
    assert len({r["path"] for r in held}) == len(held) == 36  # each training image once
    assert Counter(r["split"] for r in held) == {
        "fold1": 8,
        "fold2": 7,
        "fold3": 7,
        "fold4": 7,
        "fold5": 7,
    }
    for entry in entries:  # the score: each fold's accuracy weighted by its held-out images
        folds = entry["rungs"][0]["folds"]
        pooled = sum(f["best_val_acc"] * n for f, n in zip(folds, (8, 7, 7, 7, 7), strict=True))
        assert entry["best_val_acc"] == pytest.approx(pooled / 36)
    config = json.loads((run / "config.json").read_text())
    assert config["search"]["folds"] == 5 and config["search"]["budget"] == "1h"


def test_schedule_auto_searches_then_trains(monkeypatch, tmp_path):
    called = {}

    def fake(plugins, recipe, data, **given):
        called.update(plugins=plugins, schedule=recipe.schedule, data=data, **given)
        return "fitted"

    monkeypatch.setattr("tlplug.engine.search_and_fit", fake)
    engine = Engine.from_plugins(entrypoints=False, **{**TINY, "schedule": "auto"})
    assert engine.fit("somewhere", out=tmp_path / "x", epochs=3) == "fitted"
    assert called["plugins"] is engine.plugins and called["schedule"] == "auto"
    assert called["out"] == tmp_path / "x" and called["data"] == "somewhere"
    with pytest.raises(OptionError, match="drop --schedule-opt"):
        Engine.from_plugins(entrypoints=False, schedule="auto", schedule_opts={"a": 1})


def test_auto_is_no_registered_schedule(capsys):
    code, out, _ = tlplug(capsys, "list", "schedules")
    assert code == 0 and "auto" not in out.split()
    code, out, _ = tlplug(capsys, "run", "--help")
    assert "auto searches them" in out


def test_few_images_a_class_put_the_schedules_that_change_the_weights_least_first():
    host = PluginHost(entrypoints=False)
    assert tuple(searchable(host, None, per_class=60)[:5]) == PRIORITY
    assert tuple(searchable(host, None, per_class=12)[:5]) == FEW_SHOT_PRIORITY
    assert searchable(host, None, per_class=FEW_SHOT) == searchable(host)
    assert searchable(host, ["full", "lp-ft"], per_class=12) == ["full", "lp-ft"]  # as named
