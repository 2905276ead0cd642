"""torchvision's classification data sets as a data source: ``--data torchvision:NAME:ROOT``
(CIFAR10, CIFAR100, MNIST, FashionMNIST, SVHN, Flowers102, OxfordIIITPet, Food101, DTD,
ImageNet, ...), from their files under ROOT, with their own splits.

A set's splits are found from its constructor: ``train=True/False``, or ``split=`` with
the names it takes (train or trainval; val; test). Nothing is downloaded unless the user
asks (``--data-opt download=true``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from tlplug.data.indexed import IndexedImages, splits_of
from tlplug.data.sources import Splits
from tlplug.errors import DataError

FORM = "--data torchvision:NAME:ROOT, e.g. torchvision:CIFAR10:./data"
SPLIT_NAMES = {"train": ("train", "trainval"), "val": ("val", "valid"), "test": ("test",)}


def read_torchvision(location: str, val_split: float | None, seed: int, download: bool) -> Splits:
    """The splits of the torchvision data set ``NAME:ROOT`` names."""
    import torchvision.datasets as sets

    name, _, root = location.partition(":")
    if not name or not root:
        raise DataError(f"'{location}' names no data set and folder; {FORM}")
    kind = getattr(sets, name, None)
    if not (isinstance(kind, type) and issubclass(kind, sets.VisionDataset)):
        known = ", ".join(n for n in ("CIFAR10", "CIFAR100", "MNIST", "Flowers102", "DTD"))
        raise DataError(f"torchvision has no data set '{name}' (e.g. {known}); {FORM}")
    where = f"torchvision {name} in {root}"
    parts = {part: _load(kind, root, part, download, where) for part in ("train", "val", "test")}
    if parts["train"] is None:
        raise DataError(f"{where} has no training split tlplug can find")
    train_set = parts["train"]
    labels = _labels(train_set)
    classes = tuple(getattr(train_set, "classes", None) or map(str, range(max(labels) + 1)))
    lists = {
        part: _images(dataset, f"{name} {part}") if dataset is not None else None
        for part, dataset in parts.items()
    }
    root = str(Path(root).resolve())  # the run reads it again from any working directory
    info = {"dataset": name, "root": root, "location": f"{name}:{root}"}
    return splits_of(classes, lists["train"], lists["val"], lists["test"], val_split, seed, info)


def _load(kind: type, root: str, part: str, download: bool, where: str) -> Any:
    """Split ``part`` of data set ``kind`` under ``root``, or None if it has no such split."""
    parameters = inspect.signature(kind).parameters
    if "train" in parameters:
        tries = (
            [{"train": True}] if part == "train" else [{"train": False}] if part == "test" else []
        )
    elif "split" in parameters:
        tries = [{"split": name} for name in SPLIT_NAMES[part]]
    else:
        tries = [{}] if part == "train" else []
    for arguments in tries:
        try:
            return kind(root, download=download, **arguments)
        except ValueError:
            continue  # a split name this set does not take
        except RuntimeError as exc:
            if "not found" in str(exc).lower() or "corrupted" in str(exc).lower():
                raise DataError(
                    f"{where}: its files are not there ({' '.join(str(exc).split())}); put "
                    "them under that folder, or add --data-opt download=true to download it"
                ) from None
            raise
    return None


def _labels(dataset: Any) -> list[int]:
    """Every label of ``dataset``, without decoding its images when it keeps them."""
    for attribute in ("targets", "_labels", "labels", "_samples"):
        found = getattr(dataset, attribute, None)
        if found is not None and len(found) == len(dataset):
            if attribute == "_samples":
                return [int(label) for _, label in found]
            return [int(label) for label in found]
    return [int(dataset[index][1]) for index in range(len(dataset))]


class _Read:
    """Reads the image of item ``index`` of a torchvision data set (picklable for workers)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, index: int) -> Any:
        return self.dataset[index][0]


def _images(dataset: Any, where: str) -> IndexedImages:
    labels = tuple(_labels(dataset))
    return IndexedImages(_Read(dataset), tuple(range(len(labels))), labels, where)
