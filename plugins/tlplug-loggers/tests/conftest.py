"""Shared fixtures: a tiny image folder, a recipe that trains in a second or two on a CPU,
and a plugin that makes a run fail at a chosen epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY
from tlplug.testing import write_images


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``train/`` + ``val/`` with three classes of drawn patterns, 6 + 2 images each."""
    return write_images(tmp_path_factory.mktemp("images"), train=6, val=2)


@pytest.fixture
def tiny() -> dict:
    """A recipe that trains in a second or two on a CPU."""
    return dict(TINY)
