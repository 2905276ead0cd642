"""Shared fixtures: a tiny image folder, a fast recipe, and a plugin that watches a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file
from tlplug.testing import write_images

from helpers import RESNET


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``train/`` + ``val/`` with three classes of drawn patterns, 8 + 2 images each."""
    return write_images(tmp_path_factory.mktemp("images"), train=8, val=2)


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory) -> Path:
    """Stand-in pretrained weights for resnet10t: a random init without timm's zero init of
    each block's last BatchNorm scale, which (pinned) would block every gradient to the
    block's convolutions and so to their LoRA factors."""
    path = tmp_path_factory.mktemp("weights") / "resnet10t.safetensors"
    model = timm.create_model(RESNET.partition(":")[2], num_classes=0, zero_init_last=False)
    save_file(model.state_dict(), path)
    return path
