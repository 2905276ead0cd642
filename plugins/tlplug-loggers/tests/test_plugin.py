"""The installed package as tlplug sees it: entry point, hook API, listings."""

from __future__ import annotations

import importlib.metadata as metadata

import tlplug_loggers
from tlplug_loggers.common import epoch_numbers, flat_recipe
from tlplug_loggers.tensorboard_log import folder_of

from tlplug import HOOK_API
from tlplug.testing import run_cli as cli


def test_the_entry_point_is_installed_and_lists_both_loggers(capsys):
    points = [p for p in metadata.entry_points(group="tlplug") if p.value == "tlplug_loggers"]
    assert [p.name for p in points] == ["experiment-loggers"]
    assert tlplug_loggers.TLPLUG_HOOK_API == "1.1" and HOOK_API.split(".")[0] == "1"  # loads
    code, out, _ = cli(capsys, "list", "loggers")
    assert code == 0
    assert "tensorboard      TensorBoard event files: each step's loss" in out
    assert "dir=tensorboard (str), steps=True (bool), hparams=True (bool)" in out
    assert "mlflow           MLflow tracking: one MLflow run per tlplug run" in out
    assert "tracking_uri= (str), experiment=tlplug (str), run_name= (str)" in out
    assert "csv " in out  # the built-in one stays
    code, out, _ = cli(capsys, "plugins")
    assert "experiment-loggers (tlplug-loggers 0.1.0) loaded" in out


def test_the_recipe_flattened_and_the_numbers_of_a_record():
    recipe = {
        "lr": 0.1,
        "augment": ["flip"],
        "augment_opts": {"flip": {"p": 0.5}},
        "data_opts": {},
        "weights": None,
        "compile": False,
    }
    assert flat_recipe(recipe) == {
        "lr": 0.1,
        "augment": '["flip"]',
        "augment_opts.flip.p": 0.5,
        "data_opts": "{}",
        "weights": "None",
        "compile": False,
    }
    record = {
        "epoch": 3,
        "stage_name": "head",
        "stage_start": True,
        "stage_lr": {"head": 1.0},
        "train_loss": 0.5,
        "val_acc": None,
        "lr": {"stem": 0.0, "head": 0.01},
        "penalty": {"l2-sp": 0.25},
        "trainable_groups": ["head"],
        "is_best": True,
        "trainable_params": 10,
    }
    assert epoch_numbers(record) == [
        ("train_loss", None, 0.5),
        ("lr", "stem", 0.0),
        ("lr", "head", 0.01),
        ("penalty", "l2-sp", 0.25),
        ("trainable_params", None, 10.0),
    ]


def test_the_event_folder_of_a_run(tmp_path):
    run_dir = tmp_path / "runs" / "pets"
    assert folder_of(run_dir, "tensorboard") == run_dir / "tensorboard"
    assert folder_of(run_dir, ".") == run_dir
    # outside the run directory: a folder per run, so that a fresh run deletes only its own
    assert folder_of(run_dir, "../tb").resolve() == tmp_path / "runs" / "tb" / "pets"
    assert folder_of(run_dir, str(tmp_path / "tb")) == tmp_path / "tb" / "pets"
