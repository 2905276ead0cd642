"""Shared fixtures: tiny image folders on disk and a fast recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY, write_images


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


@pytest.fixture
def tiny() -> dict:
    """A recipe that trains in seconds on CPU."""
    return dict(TINY)
