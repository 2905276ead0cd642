"""Hugging Face data sets as a data source (``--data hf:LOCATION``): a ``save_to_disk``
folder with its own splits and a ClassLabel, and parquet files with a plain label column,
both written by the ``datasets`` package itself."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import tlplug
from tlplug.data.synthetic import draw
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.recipe import Recipe

datasets = pytest.importorskip("datasets")

PATTERNS = ("checker", "dots", "stripes")
ARGS = ["--backbone", "timm:resnet10t", "--no-pretrained", "--img-size", "32"]
ARGS += ["--batch-size", "8", "--workers", "0", "--no-plots", "--quiet"]


def drawn(count: int, seed: int, label_names: bool = False) -> dict[str, list]:
    """``count`` images of each pattern with their labels (indices, or the names)."""
    images, labels = [], []
    for label, pattern in enumerate(PATTERNS):
        for index in range(count):
            images.append(
                draw(pattern, random.Random(f"{seed}/{pattern}/{index}")).resize((48, 48))
            )
            labels.append(pattern if label_names else label)
    return {"picture": images, "kind": labels}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A DatasetDict with train/validation/test splits, saved with save_to_disk."""
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=list(PATTERNS))}
    )
    parts = {
        split: datasets.Dataset.from_dict(drawn(count, seed), features=features)
        for split, count, seed in (("train", 8, 1), ("validation", 3, 2), ("test", 2, 3))
    }
    folder = tmp_path_factory.mktemp("hf") / "set"
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


def test_a_saved_set_keeps_its_splits_and_class_names(saved):
    splits = load_data(PluginHost(), f"hf:{saved}", Recipe())
    assert splits.classes == PATTERNS
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 9, 6)
    assert splits.info["image_column"] == "picture" and splits.info["label_column"] == "kind"
    assert splits.train.load(0).mode == "RGB"


def test_parquet_files_with_plain_labels_hold_out_validation(tmp_path):
    for split, count, seed in (("train", 6, 1), ("test", 2, 3)):
        part = datasets.Dataset.from_dict(drawn(count, seed, label_names=True))
        part = part.cast_column("picture", datasets.Image())
        part.to_parquet(str(tmp_path / f"{split}.parquet"))
    recipe = Recipe(val_split=0.5, data_opts={"label": "kind"})
    splits = load_data(PluginHost(), f"hf:{tmp_path}", recipe)
    assert splits.classes == PATTERNS  # the sorted distinct labels
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 9, 6)


def test_an_hf_run_trains_resumes_and_evaluates(saved, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = tlplug(
        capsys, "run", "--data", f"hf:{saved}", *ARGS, "--epochs", "1", "--out", run_dir
    )
    assert code == 0, err
    code, _, err = tlplug(capsys, "resume", run_dir, "--epochs", "2", "--quiet")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_trained"] == 2 and summary["num_test"] == 6
    code, out, err = tlplug(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(summary["best_val_acc"])


def test_a_column_that_is_not_there_is_one_line(saved, tmp_path, capsys):
    code, _, err = tlplug(
        capsys,
        "run",
        "--data",
        f"hf:{saved}",
        "--data-opt",
        "image=photo",
        *ARGS,
        "--out",
        tmp_path / "run",
    )
    assert code == 1 and err.count("\n") == 1
    assert "has no column 'photo' (it has picture, kind)" in err
