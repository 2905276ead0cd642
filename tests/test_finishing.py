"""What a run leaves when it ends: a finished run keeps what predict, eval and export need,
continues past its last epoch with the schedules made for the new length, and a run stopped
before its first epoch blocks nothing. The commands that only look answer without torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import TINY
from tlplug import Engine, TlplugError, hookimpl

RECIPE = TINY | {"augment": (), "schedule": "freeze-unfreeze", "lr_schedule": "cosine"}


def test_a_finished_run_keeps_only_what_later_commands_need(image_folder, tmp_path):
    Engine.from_plugins(entrypoints=False, **RECIPE).fit(image_folder, out=tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.json",
        "config.json",
        "metrics.csv",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
        "train_images.csv",
        "val_images.csv",
    ]


@pytest.mark.parametrize("keep_state", [False, True])
def test_a_finished_run_continues_with_schedules_made_for_the_new_length(
    image_folder, tmp_path, capsys, keep_state
):
    recipe = RECIPE | {"keep_state": keep_state}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=tmp_path / "a")
    whole = Engine.from_plugins(entrypoints=False, **(recipe | {"epochs": 4})).fit(
        image_folder, out=tmp_path / "b", quiet=True
    )
    capsys.readouterr()
    result = Engine.resume(tmp_path / "a", entrypoints=False, epochs=4)
    out = capsys.readouterr().out
    assert "extending the run from 2 to 4 epochs" in out
    assert ("its last state" if keep_state else "its best weights") in out
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    for extended, fresh in zip(result.history[2:], whole.history[2:], strict=True):
        assert extended["lr"] == pytest.approx(fresh["lr"])  # cosine over 4 epochs
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["recipe"]["epochs"] == 4 and config["extended"][0]["after_epoch"] == 2
    with pytest.raises(TlplugError, match="already finished all 4 epochs; --resume .* --epochs N"):
        Engine.resume(tmp_path / "a", entrypoints=False)
    with pytest.raises(TlplugError, match="--epochs 3 is not more than the 4 epochs"):
        Engine.resume(tmp_path / "a", entrypoints=False, epochs=3)


class Interrupt:
    """Sends this process SIGINT at the first training step, as a Ctrl-C would."""

    name = "interrupt"

    @hookimpl
    def tlplug_step_end(self, run, step):
        if step.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_run_stopped_before_its_first_epoch_blocks_nothing(image_folder, tmp_path):
    with pytest.raises(TlplugError, match="nothing was kept; run the same command again"):
        Engine.from_plugins(Interrupt(), entrypoints=False, **RECIPE).fit(
            image_folder, out=tmp_path, quiet=True
        )
    with pytest.raises(TlplugError, match="to start over, run the same command again"):
        Engine.resume(tmp_path, entrypoints=False)
    (tmp_path / "notes.txt").write_text("a file of the user's")
    Engine.from_plugins(entrypoints=False, **RECIPE).fit(image_folder, out=tmp_path, quiet=True)
    assert (tmp_path / "notes.txt").read_text() == "a file of the user's"
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["list", "heads"], ["plugins"]])
def test_commands_that_only_look_import_no_torch(args):
    code = (
        "import sys\nfrom tlplug.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "TLPLUG_LOAD_PLUGINS": "none"}  # the built-ins only
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
