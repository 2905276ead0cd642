"""The tlplug command end to end: run, predict, list, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY, tlplug
from tlplug import Engine, TlplugError, hookimpl
from tlplug.cli import main

TINY_ARGS = ["--no-pretrained", "--img-size", "32", "--batch-size", "8", "--workers", "0"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def timm_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "r1"
    code = main_quiet(
        "run",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--schedule",
        "gradual",
        "--epochs",
        "3",
        "--out",
        out,
        *TINY_ARGS,
    )
    assert code == 0
    return out


def main_quiet(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_run_directory_contract(timm_run, image_folder):
    config = json.loads((timm_run / "config.json").read_text())
    assert config["recipe"]["backbone"] == "timm:resnet10t"
    assert config["recipe"]["schedule"] == "gradual"
    resolved = config["resolved"]
    assert resolved["classes"] == ["checker", "dots", "stripes"]
    assert [g["name"] for g in resolved["groups"]] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]
    common = {"biases": [], "lr_scale": 1.0, "warmup": 0.0}
    assert resolved["plan"] == [
        {"start": 0, "name": "head", "trainable": ["head"], **common},
        {"start": 1, "name": "layer4..head", "trainable": ["layer4", "head"], **common},
        {"start": 2, "name": "layer3..head", "trainable": ["layer3", "layer4", "head"], **common},
    ]
    assert resolved["bn_policy"] == "frozen"
    assert resolved["state_dict_prefixes"] == {"backbone": "backbone.", "head": "head."}
    assert resolved["img_size"] == 32 and resolved["data"]["layout"] == "train/val"

    metrics = read_jsonl(timm_run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    required = {
        "epoch",
        "stage",
        "trainable_groups",
        "trainable_params",
        "train_loss",
        "val_loss",
        "val_acc",
        "lr",
        "bn_policy",
        "seconds",
        "images_per_s",
    }
    assert all(required <= m.keys() for m in metrics)
    assert [m["trainable_groups"] for m in metrics] == [p["trainable"] for p in resolved["plan"]]
    assert (
        metrics[0]["trainable_params"]
        < metrics[1]["trainable_params"]
        < metrics[2]["trainable_params"]
    )
    assert set(metrics[0]["lr"]) == {g["name"] for g in resolved["groups"]}

    summary = json.loads((timm_run / "summary.json").read_text())
    assert {
        "best_val_acc",
        "best_epoch",
        "final_val_acc",
        "epochs",
        "seconds",
        "classes",
        "num_train",
        "num_val",
    } <= summary.keys()
    assert summary["num_train"] == 36 and summary["num_val"] == 12 and summary["epochs"] == 3
    assert summary["best_val_acc"] == max(m["val_acc"] for m in metrics)
    assert (timm_run / "model.safetensors").is_file()


def test_predict_prints_topk(timm_run, image_folder, capsys):
    image = next((image_folder / "val" / "dots").iterdir())
    code, out, err = tlplug(capsys, "predict", timm_run, image, "--topk", "2")
    assert code == 0, err
    line = out.strip()
    assert line.startswith(f"{image}: ") and len(line.split("  ")) == 2

    code, out, _ = tlplug(capsys, "predict", timm_run, image_folder / "val", "--json")
    predictions = json.loads(out)
    assert len(predictions) == 12
    for p in predictions:
        probs = [t["prob"] for t in p["top"]]
        assert [t["class"] for t in p["top"]] and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_torchvision_run_with_val_split(class_folders, tmp_path, capsys):
    out = tmp_path / "tv"
    code, stdout, err = tlplug(
        capsys,
        "run",
        "--data",
        class_folders,
        "--backbone",
        "torchvision:resnet18",
        "--val-split",
        "0.3",
        "--epochs",
        "2",
        "--schedule",
        "milestones",
        "--schedule-opt",
        "at=1",
        "--schedule-opt",
        "groups_per_stage=2",
        "--optimizer",
        "sgd",
        "--lr-schedule",
        "onecycle",
        "--augment",
        "flip",
        "--augment",
        "crop",
        "--augment-opt",
        "crop.scale=0.5,1",
        "--out",
        out,
        *TINY_ARGS,
    )
    assert code == 0, err
    assert "epoch 2/2" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["data"]["layout"] == "split"
    assert config["resolved"]["data"]["num_val"] == 6  # 3 of 10 per class
    assert config["recipe"]["augment_opts"]["crop"] == {"scale": [0.5, 1.0], "ratio": [0.75, 4 / 3]}
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["trainable_groups"] for m in metrics] == [["head"], ["layer3", "layer4", "head"]]


def test_existing_run_is_refused_and_untouched(timm_run, image_folder, capsys):
    before = {p.name: p.read_bytes() for p in timm_run.iterdir()}
    code, _, err = tlplug(capsys, "run", "--data", image_folder, "--out", timm_run, *TINY_ARGS)
    assert code == 1
    assert err.strip() == (
        f"Error: run directory {timm_run} is not empty; pass --resume {timm_run} to "
        "continue the run in it, --overwrite to replace it, or choose another --out"
    )
    assert {p.name: p.read_bytes() for p in timm_run.iterdir()} == before


def test_resume_command_continues_a_finished_run_and_refuses_one_with_nothing_left(
    timm_run, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(timm_run, run_dir)
    code, _, err = tlplug(capsys, "resume", run_dir)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"Error: {run_dir} already finished all 3 epochs; --resume {run_dir}")
    code, _, err = tlplug(capsys, "resume", run_dir, "--epochs", "4", "--quiet")
    assert code == 0, err
    assert [m["epoch"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    extended = json.loads((run_dir / "config.json").read_text())["extended"]
    assert [(e["from_epochs"], e["to_epochs"]) for e in extended] == [(3, 4)]


def test_overwrite_replaces_a_run_but_not_other_folders(image_folder, tmp_path, capsys):
    out = tmp_path / "again"
    args = [
        "run",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--epochs",
        "1",
        "--out",
        out,
        *TINY_ARGS,
    ]
    assert tlplug(capsys, *args)[0] == 0
    code, _, err = tlplug(capsys, *args, "--overwrite", "--seed", "5")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["recipe"]["seed"] == 5
    assert len(read_jsonl(out / "metrics.jsonl")) == 1

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _, err = tlplug(
        capsys, "run", "--data", image_folder, "--out", precious, "--overwrite", *TINY_ARGS
    )
    assert code == 1 and "holds no tlplug run" in err
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "timm:resnet5O"], "did you mean 'timm:resnet50'"),
        (["--backbone", "resnet50"], "must be PROVIDER:NAME"),
        (["--head", "linaer"], "unknown head 'linaer'; did you mean 'linear'"),
        (
            ["--schedule", "gradual", "--schedule-opt", "epochs_per_stag=2"],
            "schedule 'gradual' has no option 'epochs_per_stag'; did you mean 'epochs_per_stage'",
        ),
        (["--schedule-opt", "oops"], "--schedule-opt expects KEY=VALUE, got 'oops'"),
        (["--augment", "flipp"], "unknown augmentation 'flipp'; did you mean 'flip'"),
        (["--augment-opt", "crop.scale=1"], "--augment-opt names crop, which is not in --augment"),
        (
            ["--head", "mlp", "--head-opt", "hidden=wide"],
            "head 'mlp' option 'hidden' must be an integer",
        ),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--data", "/no/such/folder"], "data folder /no/such/folder does not exist; expected"),
        (["--optimizer", "lion"], "Invalid value for '--optimizer'"),
        (["--nonsense"], "No such option '--nonsense'"),
        (["--device", "cuda"], "no CUDA GPU is available"),
        (
            ["--backbone", "timm:levit_128s", "--img-size", "40"],
            "timm:levit_128s cannot take 40px images",
        ),
    ],
)
def test_errors_are_one_line(args, message, capsys, tmp_path):
    code, _, err = tlplug(capsys, "run", "--no-pretrained", "--out", tmp_path / "r", *args)
    assert code in (1, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_empty_data_folder_says_what_layout_is_expected(tmp_path, capsys):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "cats" / "notes.txt").write_text("not an image")
    code, _, err = tlplug(capsys, "run", "--data", tmp_path / "data", *TINY_ARGS)
    assert code == 1
    found = f"found 0 class folder(s) with usable images in {tmp_path / 'data'}"
    assert f"need at least 2 classes, {found}" in err
    assert "expected DIR/train/<class>/*.jpg" in err


def test_predict_errors(timm_run, tmp_path, capsys):
    code, _, err = tlplug(capsys, "predict", timm_run, tmp_path / "x.png")
    assert code == 1 and "x.png (it does not exist)" in err
    (tmp_path / "x.png").write_bytes(b"not an image")
    code, _, err = tlplug(capsys, "predict", tmp_path, tmp_path / "x.png")
    assert code == 1 and "is not a tlplug run directory (config.json missing)" in err
    code, _, err = tlplug(capsys, "predict", timm_run, tmp_path / "x.png")
    assert code == 1 and "cannot read image" in err and len(err.strip().splitlines()) == 1


def test_list_commands(capsys):
    code, out, err = tlplug(capsys, "list", "backbones", "timm:*convnext_at*")
    assert code == 0 and out.startswith("timm:convnext_atto")
    assert "timm: provider options (--backbone-opt): drop_rate=None" in err
    code, out, _ = tlplug(capsys, "list", "backbones", "torchvision:resnet1*")
    assert [line.split()[0] for line in out.splitlines()] == [
        "torchvision:resnet101",
        "torchvision:resnet152",
        "torchvision:resnet18",
    ]
    code, out, _ = tlplug(capsys, "list", "heads")
    assert "mlp" in out and "hidden=512 (comma-separated ints)" in out
    code, out, _ = tlplug(capsys, "list", "schedules", "grad*")
    assert out.startswith("gradual") and "epochs_per_stage=1" in out
    code, _, err = tlplug(capsys, "list", "backbones", "timm:zzz*")
    assert code == 1 and "no backbone matches" in err


def test_console_script_is_installed():
    beside_python = Path(sys.executable).parent / "tlplug"
    script = str(beside_python) if beside_python.exists() else shutil.which("tlplug")
    assert script, "pip install should put the tlplug command beside python"
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "version" in result.stdout


def test_groups_command(capsys):
    code, out, _ = tlplug(capsys, "groups", "timm:resnet10t")
    assert code == 0
    rows = [line.split() for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert int(rows[4][1].replace(",", "")) > int(rows[1][1].replace(",", ""))


def test_image_failing_to_decode_in_a_loader_worker_is_replaced_and_listed(
    tmp_path, image_folder, capsys
):
    import json
    import shutil

    shutil.copytree(image_folder, tmp_path / "d")
    good = next((tmp_path / "d" / "val" / "dots").iterdir()).read_bytes()
    broken = tmp_path / "d" / "val" / "dots" / "broken.jpg"
    broken.write_bytes(good[: len(good) * 3 // 4])  # the header reads; decoding fails
    code, out, err = tlplug(
        capsys,
        "run",
        "--data",
        tmp_path / "d",
        "--backbone",
        "timm:resnet10t",
        "--epochs",
        "1",
        "--out",
        tmp_path / "r",
        *TINY_ARGS[:-2],
        "--workers",
        "1",
    )
    assert code == 0, err
    assert "1 more image(s) failed to decode while training" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    [skipped] = summary["skipped_files"]
    assert skipped["path"] == str(broken)
    assert skipped["reason"].startswith("cannot be decoded (")


class StartFails:
    @hookimpl
    def tlplug_run_start(self, run):
        raise TlplugError("option 'x' of logger 'y' must be positive")


class FirstEpochFails:
    @hookimpl
    def tlplug_epoch_end(self, run, record):
        raise TlplugError("the plugin failed at the end of epoch 1")


def snapshot_tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("plugin", [StartFails, FirstEpochFails])
def test_a_failed_overwrite_leaves_the_earlier_run_as_it_was(plugin, image_folder, tmp_path):
    out = tmp_path / "run"
    recipe = {**TINY, "epochs": 1, "schedule": "linear-probe"}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=out, quiet=True)
    (out / "notes.txt").write_text("a user's file")
    before = snapshot_tree(out)
    engine = Engine.from_plugins(plugin(), entrypoints=False, **{**recipe, "seed": 5})
    with pytest.raises(TlplugError, match="the plugin|must be positive"):
        engine.fit(image_folder, out=out, overwrite=True, quiet=True)
    assert snapshot_tree(out) == before
    assert not (out / ".tlplug-replaced").exists()


def test_an_overwrite_keeps_a_users_files_and_drops_the_earlier_runs(image_folder, tmp_path):
    out = tmp_path / "run"
    recipe = {**TINY, "epochs": 1, "schedule": "linear-probe"}
    Engine.from_plugins(entrypoints=False, **recipe, keep_state=True).fit(
        image_folder, out=out, quiet=True
    )
    assert (out / "resume.safetensors").is_file()
    (out / "notes.txt").write_text("a user's file")
    Engine.from_plugins(entrypoints=False, **recipe, seed=5).fit(
        image_folder, out=out, overwrite=True, quiet=True
    )
    assert (out / "notes.txt").read_text() == "a user's file"
    assert not (out / "resume.safetensors").exists()  # the earlier run's, not this one's
    assert json.loads((out / "config.json").read_text())["recipe"]["seed"] == 5
    assert not (out / ".tlplug-replaced").exists()
