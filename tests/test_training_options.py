"""Options a fastai or timm user reaches for: a moving average of the weights, early
stopping, gradient accumulation, training without validation, recipes from files, and the
warnings a run gives before it trains."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, tlplug
from tlplug import Engine, TlplugError
from tlplug.recipe_file import read_recipe_file

FAST = TINY | {"augment": (), "schedule": "full", "lr": 0.01}


def test_ema_is_validated_every_epoch_and_saved_when_it_scores_best(image_folder, tmp_path):
    result = Engine.from_plugins(entrypoints=False, **(FAST | {"ema": 0.5, "epochs": 3})).fit(
        image_folder, out=tmp_path, quiet=True
    )
    assert all("ema_val_acc" in r for r in result.history)
    best = next(r for r in result.history if r["epoch"] == result.best_epoch)
    summary = json.loads((tmp_path / "summary.json").read_text())
    source = summary["best_source"]
    assert summary["best_val_acc"] == best["ema_val_acc" if source == "ema" else "val_acc"]
    # the saved weights are the ones that scored: eval gives the same accuracy
    from tlplug import evaluate_run

    assert evaluate_run(tmp_path, write=False).accuracy == summary["best_val_acc"]


def test_patience_stops_when_validation_stops_improving(image_folder, tmp_path):
    result = Engine.from_plugins(
        entrypoints=False,
        **(FAST | {"lr": 1e-12, "epochs": 6, "patience": 2, "bn_policy": "eval"}),
    ).fit(image_folder, out=tmp_path, quiet=True)  # the same model every epoch: no improvement
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs_trained"] == 3


def test_accumulating_two_half_batches_steps_like_one_whole_batch(image_folder, tmp_path):
    recipe = FAST | {
        "epochs": 1,
        "optimizer": "sgd",
        "momentum": 0.0,
        "bn_policy": "eval",
        "precision": "fp32",
    }
    whole = Engine.from_plugins(entrypoints=False, **(recipe | {"batch_size": 12}))
    half = Engine.from_plugins(entrypoints=False, **(recipe | {"batch_size": 6, "accumulate": 2}))
    whole.fit(image_folder, out=tmp_path / "whole", quiet=True)
    half.fit(image_folder, out=tmp_path / "half", quiet=True)
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("whole", "half"))
    for key in a:
        if "running_" in key or "num_batches" in key:
            continue  # BatchNorm statistics follow the batches, which differ
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_without_validation_the_last_weights_are_kept(image_folder, tmp_path, capsys):
    code, out, err = tlplug(
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
        2,
        "--val-split",
        0,
        "--no-plots",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    assert "(no validation)" in out and "12 validation images left out" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_val_acc"] is None and summary["best_epoch"] == 2
    code, _, err = tlplug(capsys, "eval", tmp_path)
    assert code == 1 and "trained without validation" in err
    with pytest.raises(TlplugError, match="patience needs validation"):
        Engine.from_plugins(val_split=0, patience=2)


def test_a_recipe_file_and_a_run_config_repeat_a_run(image_folder, tmp_path, capsys):
    (tmp_path / "recipe.toml").write_text(
        f'data = "{image_folder}"\nbackbone = "timm:resnet10t"\npretrained = false\n'
        'img_size = 32\nworkers = 0\nepochs = 1\nplots = false\nhead = "mlp"\n'
        "[head_opts]\nhidden = [16]\ndropout = 0.1\n"
    )
    code, _, err = tlplug(
        capsys,
        "run",
        "--config",
        tmp_path / "recipe.toml",
        "--head-opt",
        "dropout=0.2",
        "--out",
        tmp_path / "a",
    )
    assert code == 0, err
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    assert first["recipe"]["head_opts"] == {"hidden": [16], "dropout": 0.2, "activation": "relu"}
    assert first["command"].startswith("tlplug run --config ")
    code, _, err = tlplug(
        capsys, "run", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b"
    )
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["recipe"] == first["recipe"]
    assert again["resolved"]["data"] == first["resolved"]["data"]
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same recipe, data and seed
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    code, _, err = tlplug(capsys, "run", "--config", tmp_path / "bad.yaml")
    assert code == 1 and err.startswith("Error: --config") and "not valid YAML" in err
    assert read_recipe_file(tmp_path / "a" / "config.json")[1].startswith("folder:")


def test_warnings_before_training(image_folder, tmp_path, capsys):
    Engine.from_plugins(
        entrypoints=False, **(TINY | {"img_size": None, "epochs": 2, "schedule": "gradual"})
    ).fit(image_folder, out=tmp_path, epochs=2)
    out = capsys.readouterr().out
    assert "warning: stem, layer1, layer2, layer3 never train" in out
    assert "epochs=6 or more unfreezes every group" in out  # Python's words, not the flags
    assert "starts from random weights, and stage 'head' trains only the head" in out
    assert "(pretrained=True, weights) or a schedule that trains the backbone" in out
    assert "(schedule='full')" in out
    assert "the images are about 48px and are upscaled to 176px" in out
    assert "img_size=48 trains at their own size" in out
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["resolved"]["warnings"]) == 3
    rows = (tmp_path / "val_images.csv").read_text().splitlines()
    assert rows[0] == "path,class" and len(rows) == 1 + 12
    assert rows[1].endswith(",checker") and str(image_folder) in rows[1]
