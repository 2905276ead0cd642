"""Shared fixtures: tiny image folders on disk and a fast recipe."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tlplug import hookimpl
from tlplug.data.synthetic import draw
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


def write_images(folder: Path, pattern: str, count: int, seed: int, suffix: str = ".png") -> None:
    """Draw ``count`` images of a synthetic ``pattern`` into ``folder`` at 48 px."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = draw(pattern, random.Random(f"{seed}/{pattern}/{i}")).resize((48, 48))
        image.save(folder / f"{pattern}_{i}{suffix}")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``train/`` + ``val/`` with three classes of drawn patterns, PNG and JPEG."""
    root = tmp_path_factory.mktemp("images")
    for index, pattern in enumerate(("checker", "dots", "stripes")):
        suffix = ".jpg" if index % 2 else ".png"
        write_images(root / "train" / pattern, pattern, 12, seed=1, suffix=suffix)
        write_images(root / "val" / pattern, pattern, 4, seed=2, suffix=suffix)
    return root


@pytest.fixture(scope="session")
def class_folders(tmp_path_factory) -> Path:
    """Class folders only (no train/val), for --val-split."""
    root = tmp_path_factory.mktemp("classes")
    for pattern in ("checker", "rings"):
        write_images(root / pattern, pattern, 10, seed=3)
    return root


tlplug = run_cli  # the tests' name for running the CLI in-process


@pytest.fixture
def tiny() -> dict:
    """A recipe that trains in seconds on CPU."""
    return dict(TINY)


class RunDirFiles:
    """A lifecycle plugin that records, after each epoch, the run directory's files whose
    names match ``pattern``."""

    name = "run-dir-files"

    def __init__(self, pattern: str):
        self.pattern, self.seen = pattern, []

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self.seen.append(sorted(p.name for p in run.run_dir.glob(self.pattern)))
