"""tlplug eval: the validation pass of a run repeated exactly, on its own split or other data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import TINY, tlplug
from tlplug.engine import Engine
from tlplug.ship.evaluate import evaluate_run

# fp32 (a head-only epoch on cached features, then the whole network), bf16 autocast, and a
# head trained on cached features alone (the linear probe's only stage).
RECIPES = {
    "fp32": {"precision": "fp32", "augment": ["none"], "epochs": 2, "lr": 0.01},
    "bf16": {"precision": "bf16"},
    "cached": {"precision": "fp32", "schedule": "linear-probe", "augment": ["none"], "lr": 0.2},
}


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    made = {}
    for name, recipe in RECIPES.items():
        engine = Engine.from_plugins(entrypoints=False, **{**TINY, "epochs": 1, **recipe})
        made[name] = engine.fit(image_folder, out=root / name, quiet=True).run_dir
    return made


def best_epoch(run: Path) -> tuple[dict, dict]:
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics[summary["best_epoch"] - 1]


@pytest.mark.parametrize("name", list(RECIPES))
def test_eval_reproduces_the_runs_validation_exactly(runs, name):
    report = evaluate_run(runs[name], write=False)
    summary, record = best_epoch(runs[name])
    assert report.accuracy == summary["best_val_acc"]  # the same float, not approximately
    assert report.confusion == summary["confusion_matrix"]
    assert report.loss == record["val_loss"]  # the same logits, summed in the same order
    assert report.num_images == summary["num_val"] == 12 and report.split == "val"
    assert report.settings["precision"] == ("bf16" if name == "bf16" else "fp32")
    assert record["feature_cache"] or name != "cached"  # its head saw only cached features


def test_eval_command_prints_writes_and_reports_json(runs, capsys):
    run = runs["fp32"]
    code, out, err = tlplug(capsys, "eval", run)
    assert code == 0, err
    best = json.loads((run / "summary.json").read_text())["best_val_acc"]
    assert f"accuracy {best:.4f} (the run's best_val_acc {best:.4f})" in out
    assert out.splitlines()[4].split()[0] == "checker" and "top-3" in out and "ECE" in out
    assert out.splitlines()[2].startswith("calibration: temperature ")
    for name in ("eval.json", "confusion_matrix.png"):
        assert (run / "eval" / name).is_file()
    assert Image.open(run / "eval" / "confusion_matrix.png").format == "PNG"

    code, out, err = tlplug(capsys, "eval", run, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["accuracy"] == best and 0 <= report["ece"] <= 1 and report["num_images"] == 12
    assert set(report["per_class"]) == {"checker", "dots", "stripes"}
    assert set(report["per_class"]["dots"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, report["confusion_matrix"])) == 12 and report["batch_size"] == 8
    assert list(report["top_k"]) == ["1", "3"] and report["top_k"]["3"] == 1.0
    assert report["top_k"]["1"] == report["accuracy"]
    wrong = 12 - sum(report["confusion_matrix"][i][i] for i in range(3))
    assert len(report["worst"]) == min(wrong, 16)
    confidences = [w["confidence"] for w in report["worst"]]
    assert confidences == sorted(confidences, reverse=True)
    assert (run / "eval" / "worst_images.png").is_file() == bool(wrong)
    assert json.loads((run / "eval" / "eval.json").read_text())["accuracy"] == best


def test_eval_on_other_data(runs, image_folder, tmp_path, capsys):
    own = evaluate_run(runs["bf16"], write=False)
    same = evaluate_run(runs["bf16"], image_folder, write=False)  # train/ + val/: its val/
    assert same.split == "val" and same.confusion == own.confusion

    flat = tmp_path / "flat"  # DIR/<class>/: all its images
    shutil.copytree(image_folder / "val", flat)
    (flat / "dots" / "broken.png").write_bytes(b"not an image")
    report = evaluate_run(runs["bf16"], flat, write=False)
    assert report.split == "all" and report.confusion == own.confusion
    assert [s["path"] for s in report.skipped] == [str(flat / "dots" / "broken.png")]

    images = sorted(flat.rglob("*_*.*"))
    rows = ["path,label"] + [f"{p.relative_to(flat)},{p.parent.name}" for p in images]
    (flat / "list.csv").write_text("\n".join(rows) + "\n")
    code, out, err = tlplug(capsys, "eval", runs["bf16"], flat / "list.csv", "--json")
    assert code == 0, err
    assert json.loads(out)["confusion_matrix"] == own.confusion


def test_eval_refuses_other_classes_and_changed_data(runs, image_folder, tmp_path, capsys):
    other = tmp_path / "other"
    for name in ("checker", "dots", "rings"):
        shutil.copytree(image_folder / "val" / "checker", other / name)
    code, _, err = tlplug(capsys, "eval", runs["fp32"], other)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "does not have the run's classes (missing stripes; extra rings)" in err

    data = tmp_path / "data"  # the run's data, one validation image fewer
    shutil.copytree(image_folder, data)
    next((data / "val" / "dots").iterdir()).unlink()
    run = tmp_path / "run"
    shutil.copytree(runs["fp32"], run)
    config = json.loads((run / "config.json").read_text())
    config["resolved"]["data"]["location"] = str(data)
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = tlplug(capsys, "eval", run)
    assert code == 1 and "cannot rebuild the validation split" in err
    assert "it now gives 11 validation images, the run had 12" in err


def test_eval_writes_only_its_own_files(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "confusion_matrix.png").write_text("mine too")
    code, _, err = tlplug(capsys, "eval", runs["cached"], "--out", out)
    assert code == 1 and "was not written by tlplug eval" in err
    assert (out / "confusion_matrix.png").read_text() == "mine too"

    (out / "confusion_matrix.png").unlink()
    for size in (8, 5):  # the second replaces the first's files
        code, _, err = tlplug(capsys, "eval", runs["cached"], "--out", out, "--batch-size", size)
        assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["batch_size"] == 5
    assert (out / "notes.txt").read_text() == "mine"
    code, _, err = tlplug(capsys, "eval", runs["cached"], "--out", out / "notes.txt")
    assert code == 1 and "is a file" in err


def test_eval_tta_is_deterministic_and_reported(runs, image_folder, tmp_path, capsys):
    few = tmp_path / "few"  # an image per class: 7 views each are enough to check
    for name in ("checker", "dots", "stripes"):
        (few / name).mkdir(parents=True)
        shutil.copy(sorted((image_folder / "val" / name).iterdir())[0], few / name)
    first = evaluate_run(runs["cached"], few, tta=True, write=False)
    assert first.settings["tta"] and first.num_images == 3
    code, out, err = tlplug(capsys, "eval", runs["cached"], few, "--tta", "--json")
    assert code == 0, err
    again = json.loads(out)  # a second pass, the same to the bit
    assert again["tta"] is True and again["loss"] == first.loss and again["ece"] == first.ece
    assert again["confusion_matrix"] == first.confusion and again["per_class"] == first.per_class
    assert again["worst"] == first.worst
    assert first.loss != evaluate_run(runs["cached"], few, write=False).loss


def test_eval_on_the_images_a_run_trained_on_warns_and_counts_them(runs, image_folder, capsys):
    run = runs["fp32"]
    trained = (run / "train_images.csv").read_text().splitlines()
    assert trained[0] == "path,class" and len(trained) - 1 == 36
    train = image_folder / "train"  # DIR/<class>/ given as data: all its images
    report = evaluate_run(run, train, write=False)
    assert report.split == "all" and report.train_overlap == report.num_images == 36
    held_out = evaluate_run(run, image_folder, write=False)  # its val/: none trained on
    assert held_out.train_overlap == 0
    code, out, err = tlplug(capsys, "eval", run, train, "--json")
    assert code == 0, err
    assert json.loads(out)["train_overlap"] == 36
    assert err.splitlines() == [
        f"warning: 36 of the 36 images evaluated are images the run trained on "
        f"({run / 'train_images.csv'}): this accuracy is not measured on held-out images"
    ]
