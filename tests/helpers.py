"""What the tests share besides fixtures (those are in conftest.py): the tiny recipe, the
in-process CLI runner, an image writer and a plugin that watches the run directory. Test
modules import these from here; pytest loads conftest.py itself."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

from tlplug import hookimpl
from tlplug.data.synthetic import draw
from tlplug.rundir.checkpoint import read_resume
from tlplug.testing import run_cli

TINY = {
    "backbone": "timm:resnet10t",
    "pretrained": False,
    "img_size": 32,
    "batch_size": 8,
    "workers": 0,
    "epochs": 2,
    "plots": False,  # tests/test_plots.py draws them
    "probe": "epochs",  # head stages take steps; tests/test_probe.py covers the converged probe
}

tlplug = run_cli  # the tests' name for running the CLI in-process


def write_images(folder: Path, pattern: str, count: int, seed: int, suffix: str = ".png") -> None:
    """Draw ``count`` images of a synthetic ``pattern`` into ``folder`` at 48 px."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = draw(pattern, random.Random(f"{seed}/{pattern}/{i}")).resize((48, 48))
        image.save(folder / f"{pattern}_{i}{suffix}")


class RunDirFiles:
    """A lifecycle plugin that records, after each epoch, the run directory's files whose
    names match ``pattern``."""

    name = "run-dir-files"

    def __init__(self, pattern: str):
        self.pattern, self.seen = pattern, []

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self.seen.append(sorted(p.name for p in run.run_dir.glob(self.pattern)))


def epochs_of(run_dir: Path) -> list[int]:
    """The epochs metrics.jsonl of ``run_dir`` records, in order."""
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]


def wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen) -> None:
    """Wait until the run's resume state holds epoch ``count``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        state = run_dir / "resume.safetensors"
        if state.is_file() and read_resume(state).epoch >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach epoch {count}: {process.communicate()}")


def final_model(run_dir: Path) -> dict:
    """The model tensors (``model.*``) of ``run_dir``'s resume state: the last epoch's."""
    state = read_resume(run_dir / "resume.safetensors")
    return {k: v for k, v in state.tensors.items() if k[:6] == "model."}
