"""Data sources: a ``--data`` folder or, without one, the built-in synthetic set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
from PIL import Image

from tlplug.data.folders import read_folder
from tlplug.data.synthetic import synthetic_splits


class ImageList(Protocol):
    """A sized list of labelled images, read one at a time."""

    labels: Sequence[int]

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image."""


@attrs.frozen
class Splits:
    """Class names plus train and validation images, and how they were found."""

    classes: tuple[str, ...]
    train: ImageList
    val: ImageList
    info: dict[str, Any]
    img_size: int | None = None  # the size the source is meant for, used when none is asked


def load_data(data: str | os.PathLike | None, val_split: float | None, seed: int) -> Splits:
    """Read ``data`` (a folder path) or, when it is None, build the synthetic set."""
    if data is None:
        return synthetic_splits(seed=seed)
    return read_folder(Path(data), val_split=val_split, seed=seed)
