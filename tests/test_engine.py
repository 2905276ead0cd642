"""The Python API: Engine.from_plugins, fit, load; data layouts; a seeded accuracy check."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from helpers import tlplug
from tlplug import Engine, TlplugError
from tlplug.data.folders import read_folder
from tlplug.errors import DataError
from tlplug.plugins.resolve import load_data


def test_fit_returns_result_and_load_predicts(image_folder, tmp_path, tiny):
    engine = Engine.from_plugins(entrypoints=False, **tiny)
    result = engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    assert result.run_dir == tmp_path / "run"
    assert 0 <= result.best_val_acc <= 1 and result.best_epoch in (1, 2)
    assert len(result.history) == 2

    classifier = Engine.load(result.run_dir, entrypoints=False)
    assert classifier.classes == ("checker", "dots", "stripes")
    images = sorted((image_folder / "val").rglob("*.*"))
    predictions = classifier.predict(images, topk=3)
    assert len(predictions) == len(images)
    with torch.no_grad():
        batch = torch.stack(
            [
                classifier.transform(__import__("PIL.Image").Image.open(p).convert("RGB"))
                for p in images[:2]
            ]
        )
        logits = classifier(batch)
    assert logits.shape == (2, 3)
    assert predictions[0].top[0][0] == classifier.classes[int(logits[0].argmax())]


def test_fit_uses_the_recipe_epochs_unless_given(image_folder, tmp_path, tiny):
    engine = Engine.from_plugins(entrypoints=False, **{**tiny, "epochs": 1})
    assert len(engine.fit(image_folder, out=tmp_path / "a", quiet=True).history) == 1
    assert len(engine.fit(image_folder, epochs=2, out=tmp_path / "b", quiet=True).history) == 2


def test_same_seed_same_result(image_folder, tmp_path, tiny):
    runs = [
        Engine.from_plugins(entrypoints=False, **tiny).fit(
            image_folder, out=tmp_path / n, quiet=True
        )
        for n in ("a", "b")
    ]
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]


def test_recipe_round_trips_through_config(image_folder, tmp_path, tiny):
    engine = Engine.from_plugins(
        entrypoints=False,
        **tiny,
        head="mlp",
        head_opts={"hidden": "16,8", "dropout": "0.1"},
        augment=["flip", "color-jitter"],
        augment_opts={"color-jitter": {"hue": 0.1}},
    )
    result = engine.fit(image_folder, epochs=1, out=tmp_path, quiet=True)
    config = json.loads((result.run_dir / "config.json").read_text())
    rebuilt = Engine.from_plugins(entrypoints=False, **config["recipe"]).recipe
    assert rebuilt == attrs.evolve(engine.recipe, epochs=1)
    assert rebuilt.head_opts == {"hidden": (16, 8), "dropout": 0.1, "activation": "relu"}
    assert config["resolved"]["augmentations"][1] == {
        "name": "color-jitter",
        "plugin": "augmentations",
        "options": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    }


def test_stratified_split_is_seeded_and_recorded(class_folders):
    a = read_folder(class_folders, val_split=0.3, seed=1)
    b = read_folder(class_folders, val_split=0.3, seed=1)
    c = read_folder(class_folders, val_split=0.3, seed=2)
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert sorted(a.val.labels) == [0, 0, 0, 1, 1, 1]
    assert not set(a.train.paths) & set(a.val.paths)
    assert a.info["val_split"] == 0.3 and a.info["seed"] == 1


def test_folder_layout_rules(tmp_path, image_folder):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="need at least 2 classes, found 0"):
        read_folder(tmp_path, None, 0)
    splits = read_folder(image_folder, None, 0)
    assert splits.classes == ("checker", "dots", "stripes") and len(splits.val) == 12


def test_val_class_missing_from_train(tmp_path, image_folder):
    import shutil

    shutil.copytree(image_folder, tmp_path / "d")
    shutil.copytree(tmp_path / "d" / "val" / "dots", tmp_path / "d" / "val" / "rings")
    with pytest.raises(DataError, match="rings in .* have no usable images in"):
        read_folder(tmp_path / "d", None, 0)


def test_hidden_and_non_image_files_are_ignored(tmp_path, class_folders):
    import shutil

    shutil.copytree(class_folders, tmp_path / "d")
    (tmp_path / "d" / "checker" / ".DS_Store").write_text("x")
    (tmp_path / "d" / "checker" / "labels.csv").write_text("x")
    (tmp_path / "d" / ".cache").mkdir()
    (tmp_path / "d" / "rings" / "UPPER.PNG").write_bytes(
        (class_folders / "rings" / "rings_0.png").read_bytes()
    )
    splits = read_folder(tmp_path / "d", 0.2, 0)
    assert splits.classes == ("checker", "rings")
    assert len(splits.train) + len(splits.val) == 21


def test_synthetic_data_is_deterministic():
    from tlplug import Recipe
    from tlplug.plugins.host import PluginHost

    plugins = PluginHost(entrypoints=False)
    a, b = load_data(plugins, None, Recipe()), load_data(plugins, None, Recipe())
    assert a.classes == ("checker", "dots", "rings", "stripes")
    assert a.train.load(5).tobytes() == b.train.load(5).tobytes()
    assert a.img_size == 64


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_synthetic_task_is_learned(precision, tmp_path):
    """A seeded run on the synthetic set must beat chance (0.25) by a wide margin, in fp32
    and with bf16 autocast."""
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone="timm:resnet10t",
        pretrained=False,
        img_size=32,
        schedule="full",
        lr=3e-3,
        epochs=4,
        workers=0,
        seed=0,
        precision=precision,
    )
    result = engine.fit(out=tmp_path, quiet=True)
    assert result.best_val_acc >= 0.75, result.history
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resolved"]["precision"] == precision


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(image_folder, tmp_path, tiny):
    """--compile runs the backbone through torch.compile (real C++ kernels on this CPU): the
    losses follow the eager run's, and the saved weights load as a plain model."""
    from torch._dynamo.utils import counters

    recipe = tiny | {"schedule": "freeze-unfreeze", "epochs": 2, "augment": (), "precision": "fp32"}
    eager = Engine.from_plugins(entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "eager", quiet=True
    )
    counters.clear()
    compiled = Engine.from_plugins(entrypoints=False, compile=True, **recipe).fit(
        image_folder, out=tmp_path / "compiled", quiet=True
    )
    assert counters["stats"]["unique_graphs"] >= 1  # compiled, not fallen back to eager
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-3)
    assert compiled.history[1]["feature_cache"] is False  # the images ran through it
    classifier = Engine.load(compiled.run_dir, entrypoints=False)
    assert not any("_orig_mod" in k for k in classifier.model.state_dict())


def test_compile_without_a_cpp_compiler_says_what_to_do(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    code, _, err = tlplug(
        capsys,
        "run",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--compile",
        "--device",
        "cpu",
        "--out",
        tmp_path / "run",
    )
    assert code != 0 and "Traceback" not in err
    assert "--compile on CPU needs a C++ compiler (g++ or clang++)" in err
    assert not (tmp_path / "run").exists()


def test_load_refuses_weights_that_do_not_match(image_folder, tmp_path, tiny):
    from safetensors.torch import load_file, save_file

    result = Engine.from_plugins(entrypoints=False, **tiny).fit(
        image_folder, epochs=1, out=tmp_path, quiet=True
    )
    state = load_file(tmp_path / "model.safetensors")
    state.pop("head.0.bias")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(TlplugError, match="does not match the model described in config.json"):
        Engine.load(result.run_dir, entrypoints=False)
