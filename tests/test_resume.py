"""Runs that survive: resume state, --resume, signals, divergence, hostile files, memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import epochs_of, final_model, tlplug, wait_for_epochs
from tlplug import Engine, hookimpl
from tlplug.rundir.checkpoint import read_resume

TINY_ARGS = ["--no-pretrained", "--img-size", "32", "--batch-size", "8", "--workers", "0"]
RUN_RECIPE = dict(
    backbone="timm:resnet10t",
    pretrained=False,
    img_size=32,
    batch_size=8,
    workers=0,
    schedule="gradual",
    optimizer="adamw",
    augment=("flip", "crop"),
    epochs=4,
    keep_state=True,
    plots=False,  # the tests compare the final states of finished runs
    probe="epochs",  # every stage takes steps, as the step-by-step comparisons need
)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class CrashAt:
    """A plugin that makes the run fail at the end of ``epoch`` (a crash of any kind)."""

    name = "crash"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        if run.epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(image_folder, tmp_path):
    whole = Engine.from_plugins(entrypoints=False, **RUN_RECIPE).fit(
        image_folder, out=tmp_path / "whole", quiet=True
    )
    engine = Engine.from_plugins(CrashAt(3), entrypoints=False, **RUN_RECIPE)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.fit(image_folder, out=tmp_path / "cut", quiet=True)
    assert read_resume(tmp_path / "cut" / "resume.safetensors").epoch == 2
    resumed = Engine.resume(tmp_path / "cut", entrypoints=False, quiet=True)
    assert epochs_of(tmp_path / "cut") == [1, 2, 3, 4]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in whole.history]
    assert_same_tensors(final_model(tmp_path / "whole"), final_model(tmp_path / "cut"))
    assert_same_tensors(
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "cut" / "model.safetensors"),
    )
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["best_epoch"] == whole.best_epoch


def test_resume_state_holds_everything_as_tensors_and_json(image_folder, tmp_path):
    Engine.from_plugins(entrypoints=False, **(RUN_RECIPE | {"epochs": 1})).fit(
        image_folder, out=tmp_path, quiet=True
    )
    state = read_resume(tmp_path / "resume.safetensors")
    assert state.epoch == 1 and state.meta["schedule"]["stage"] == 0
    assert state.meta["recipe"]["schedule"] == "gradual"
    assert {"best_acc", "best_epoch", "seconds"} <= state.meta["best"].keys()
    assert "rng.torch" in state.tensors
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg") for k in state.tensors)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tlplug", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


KILL_ARGS = [
    "--backbone",
    "timm:resnet10t",
    "--no-pretrained",
    "--img-size",
    "32",
    "--workers",
    "0",
    "--schedule",
    "freeze-unfreeze",
    "--augment",
    "flip",
    "--augment",
    "crop",
    "--epochs",
    "3",
    "--quiet",
    "--keep-state",
    "--no-plots",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = run_cli(*KILL_ARGS, "--out", str(tmp_path / "whole"))
    assert whole.wait(timeout=300) == 0, whole.communicate()
    killed = run_cli(*KILL_ARGS, "--out", str(tmp_path / "cut"))
    wait_for_epochs(tmp_path / "cut", 1, killed)
    time.sleep(1.0)  # into epoch 2
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert read_resume(tmp_path / "cut" / "resume.safetensors").epoch in (1, 2)
    resumed = run_cli("--resume", str(tmp_path / "cut"), "--quiet")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert epochs_of(tmp_path / "cut") == [1, 2, 3]
    assert_same_tensors(final_model(tmp_path / "whole"), final_model(tmp_path / "cut"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_a_signal_stops_at_a_safe_point_and_says_how_to_resume(signum, code, tmp_path):
    run_dir = tmp_path / "run"
    process = run_cli(*KILL_ARGS, "--out", str(run_dir))
    wait_for_epochs(run_dir, 1, process)
    before = (run_dir / "resume.safetensors").read_bytes()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"continue with: tlplug run --resume {run_dir}" in lines[0]
    state = read_resume(run_dir / "resume.safetensors")
    assert state.epoch >= 1 and (
        state.epoch > 1 or (run_dir / "resume.safetensors").read_bytes() == before
    )
    resumed = run_cli("--resume", str(run_dir), "--quiet")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert epochs_of(run_dir) == [1, 2, 3]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    process = run_cli(*KILL_ARGS, "--out", str(run_dir))
    wait_for_epochs(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert read_resume(run_dir / "resume.safetensors").epoch >= 1


@pytest.fixture(scope="module")
def finished_run(image_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Engine.from_plugins(entrypoints=False, **(RUN_RECIPE | {"epochs": 1})).fit(
        image_folder, out=run_dir, quiet=True
    )
    return run_dir


class Payload:
    """Pickles to a call that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["resume.safetensors", "model.safetensors"])
def test_a_pickle_in_place_of_a_run_file_is_refused_and_runs_nothing(
    target, finished_run, image_folder, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, run_dir / target)
    if target == "resume.safetensors":
        cfg = json.loads((run_dir / "config.json").read_text())
        cfg["recipe"]["epochs"] = 2
        (run_dir / "config.json").write_text(json.dumps(cfg))
        code, _, err = tlplug(capsys, "run", "--resume", run_dir)
    else:
        code, _, err = tlplug(capsys, "predict", run_dir, image_folder / "val")
    assert code == 1 and not marker.exists()
    assert err.count("\n") == 1 and "not a readable" in err and "Traceback" not in err


def test_resume_refuses_a_state_from_another_class_count(
    finished_run, class_folders, tmp_path, capsys
):
    other = tmp_path / "other"
    recipe = RUN_RECIPE | {"epochs": 2}
    with pytest.raises(RuntimeError):
        Engine.from_plugins(CrashAt(1), entrypoints=False, **recipe).fit(
            class_folders, out=other, quiet=True
        )
    (other / "metrics.jsonl").write_text("")
    for state in finished_run.glob("*resume*.safetensors"):  # the state and its frozen part
        shutil.copy(state, other / state.name)
    code, _, err = tlplug(capsys, "run", "--resume", other)
    assert code == 1
    assert "resume state is for another model or class count" in err
    assert "head.0.weight (3, 512) vs (2, 512)" in err


def test_truncated_resume_state_gets_a_clear_message(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    data = (run_dir / "resume.safetensors").read_bytes()
    (run_dir / "resume.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = tlplug(capsys, "run", "--resume", run_dir)
    assert code == 1 and "not a readable resume state" in err and "truncated" in err


def test_resume_takes_no_other_options_and_a_finished_run_is_not_resumed(finished_run, capsys):
    code, _, err = tlplug(capsys, "run", "--resume", finished_run, "--lr", "0.1")
    assert code == 1 and "drop --lr" in err
    code, _, err = tlplug(capsys, "run", "--resume", finished_run)
    assert code == 1 and "already finished all 1 epochs" in err


def test_run_files_are_readable_as_the_umask_allows(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "summary.json", "model.safetensors", "resume.safetensors"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_stage_keeps_its_frozen_weights_in_one_part_beside_the_resume_state(
    image_folder, tmp_path, capsys
):
    """A linear probe's resume state holds the head; the frozen backbone is written once, to
    a part file the state names. Together they are the whole model; without the part,
    --resume says what is missing."""
    recipe = RUN_RECIPE | {"schedule": "linear-probe", "epochs": 3}
    with pytest.raises(RuntimeError):
        Engine.from_plugins(CrashAt(2), entrypoints=False, **recipe).fit(
            image_folder, out=tmp_path, quiet=True
        )
    own = load_file(tmp_path / "resume.safetensors")
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert all(k.endswith(buffers) for k in own if k.startswith("model.backbone."))
    assert any(k.startswith("model.head.") for k in own)
    (part,) = tmp_path.glob(".resume-frozen-*.safetensors")
    model = final_model(tmp_path)
    best = load_file(tmp_path / "model.safetensors")
    assert {k[6:] for k in model} == best.keys()
    assert_same_tensors(
        {k: v for k, v in model.items() if k.startswith("model.backbone.")},
        {"model." + k: v for k, v in best.items() if k.startswith("backbone.")},
    )

    part.rename(tmp_path / "elsewhere")
    code, _, err = tlplug(capsys, "run", "--resume", tmp_path)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"needs {part.name}, its frozen weights, which is missing" in err
    (tmp_path / "elsewhere").rename(part)
    Engine.resume(tmp_path, entrypoints=False, quiet=True)
    (new_part,) = tmp_path.glob(".resume-frozen-*.safetensors")  # a new one, the old removed
    assert new_part != part


def test_no_part_remains_once_everything_trains(image_folder, tmp_path):
    recipe = RUN_RECIPE | {"schedule": "freeze-unfreeze", "epochs": 2}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=tmp_path, quiet=True)
    assert not list(tmp_path.glob(".resume-frozen-*"))
    assert any(k.startswith("model.backbone.") for k in load_file(tmp_path / "resume.safetensors"))
