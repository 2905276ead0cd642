"""Data sources: what ``--data`` names, turned into class names and image splits.

Sources are plugins (``tlplug_register_data_sources``). The built-in ones read a folder
tree, a CSV manifest or draw the synthetic set; ``--data NAME:LOCATION`` picks a source by
name, and a plain path picks ``folder`` or ``csv`` by what it is.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from PIL import Image

from tlplug.errors import DataError
from tlplug.rundir.layout import write_atomic

if TYPE_CHECKING:
    pass


class DecodeError(DataError):
    """An image that cannot be decoded; training replaces it and lists it as skipped."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} {reason}")
        self.path, self.reason = path, reason


class ImageList(Protocol):
    """A sized list of labelled images, read one at a time."""

    labels: Sequence[int]

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image; raise DecodeError if it cannot."""


@attrs.frozen
class NoImages:
    """No images: the validation split of a run that trains without validation."""

    labels: tuple[int, ...] = ()

    def __len__(self) -> int:
        return 0

    def load(self, index: int) -> Image.Image:
        """There is no image ``index``."""
        raise IndexError(index)


@attrs.frozen
class Skipped:
    """A file left out, and why."""

    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """Return ``{"path": ..., "reason": ...}``."""
        return {"path": self.path, "reason": self.reason}


@attrs.frozen
class Splits:
    """Class names plus train, validation and (optional) test images, and how they were found.

    ``info`` is JSON-ready and goes to config.json; ``skipped`` lists files left out;
    ``warnings`` are lines the run prints (a class left out, say).
    """

    classes: tuple[str, ...]
    train: ImageList
    val: ImageList
    info: dict[str, Any]
    img_size: int | None = None  # the size the source is meant for, used when none is asked
    test: ImageList | None = None
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[str, ...] = ()


def split_data_spec(data: str | os.PathLike | None, names: Sequence[str]) -> tuple[str, str]:
    """Return ``(source name, location)`` for a ``--data`` value."""
    if data is None:
        return "synthetic", ""
    text = os.fspath(data)
    if "\x00" in text:
        raise DataError("--data contains a NUL byte; give a folder, a .csv file or SOURCE:LOCATION")
    name, sep, rest = text.partition(":")
    if sep and name in names and len(name) > 1:  # "C:\\..." is a drive, not a source
        return name, rest
    path = Path(text)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv", text
    shards = path.name.endswith(".tar") or (path.is_dir() and any(path.glob("train-*.tar")))
    if shards and "shards" in names:  # a shard, a pattern of them, or a folder of them
        return "shards", text
    return "folder", text


def check_splits(splits: Splits, name: str, validate: bool = True) -> None:
    """Raise DataError when ``splits`` cannot train a classifier (or validate it)."""
    if len(splits.classes) < 2:
        raise DataError(
            f"data source '{name}' found {len(splits.classes)} class(es) with images; "
            "a classifier needs at least 2"
        )
    for split, images in (("train", splits.train), ("val", splits.val)):
        if len(images) == 0 and (split == "train" or validate):
            raise DataError(f"data source '{name}' has no {split} images")


def write_image_list(path: Path, images: ImageList, classes: Sequence[str]) -> None:
    """Write which images a split holds, one ``path,class`` row each (``#INDEX`` for an
    image a source made rather than read)."""
    paths = getattr(images, "paths", None)
    rows = [["path", "class"]] + [
        [paths[index] if paths is not None else f"#{index}", classes[label]]
        for index, label in enumerate(images.labels)
    ]
    write_atomic(path, lambda out: csv.writer(out).writerows(rows))


def listed_images(path: Path, paths: Sequence[str] | None) -> int:
    """How many of the image files ``paths`` a list :func:`write_image_list` wrote holds
    (0 when there is no such list, or the images are not files)."""
    if paths is None or not path.is_file():
        return 0
    with open(path, newline="") as rows:
        listed = {str(Path(row["path"]).resolve()) for row in csv.DictReader(rows)}
    return sum(str(Path(image).resolve()) in listed for image in paths)
