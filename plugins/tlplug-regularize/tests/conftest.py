"""Shared fixtures: a tiny image folder on disk, a recipe that trains in seconds on CPU, and
a small real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY
from tlplug.testing import write_images


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``train/`` + ``val/`` with three classes of drawn patterns."""
    return write_images(tmp_path_factory.mktemp("images"), train=8, val=3)


@pytest.fixture
def tiny() -> dict:
    """A recipe that trains in seconds on CPU (no augmentation)."""
    return dict(TINY)
