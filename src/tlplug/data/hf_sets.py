"""Hugging Face ``datasets`` as a data source: ``--data hf:LOCATION``, where LOCATION is a
folder written by ``save_to_disk``, parquet files (a file, a folder of them or a glob), or
a data set's name found in the local cache. Needs the ``datasets`` package
(``pip install 'tlplug[hf]'``).

The image column is the first of the ``Image`` feature type and the label column the
first ``ClassLabel`` (its names are the classes); ``--data-opt image=COLUMN`` and
``label=COLUMN`` choose others (a label column of plain values has its sorted distinct
values as classes). The set's own splits are used: ``train``, ``validation`` (or
``val``, ``valid``) and ``test``; without a validation split, ``--val-split`` of the
training images is held out. Nothing is downloaded unless ``--data-opt download=true``.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from tlplug.data.indexed import IndexedImages, splits_of
from tlplug.data.sources import Splits
from tlplug.errors import DataError

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
EXTRA = "the hf data source needs the datasets package: pip install 'tlplug[hf]'"


def read_hf(
    location: str, val_split: float | None, seed: int, image: str, label: str, download: bool
) -> Splits:
    """The splits of the Hugging Face data set at ``location``."""
    if not download:  # read before datasets is imported: only what is on this machine
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError(EXTRA) from None
    loaded, where = _load(datasets, location)
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    found = {
        part: next((parts[n] for n in names if n in parts), None)
        for part, names in SPLIT_NAMES.items()
    }
    if found["train"] is None:
        raise DataError(f"{where} has no 'train' split (it has {', '.join(parts)})")
    features = found["train"].features
    image = image or _first(features, datasets.Image, "image", where)
    label = label or _first(features, datasets.ClassLabel, "label", where)
    for column in (image, label):
        if column not in features:
            raise DataError(f"{where} has no column '{column}' (it has {', '.join(features)})")
    if isinstance(features[label], datasets.ClassLabel):
        classes = tuple(features[label].names)
        to_index = None
    else:
        values = sorted({v for part in found.values() if part is not None for v in part[label]})
        classes, to_index = tuple(map(str, values)), {v: i for i, v in enumerate(values)}
    lists = {
        part: _images(dataset, image, label, to_index, f"{where} {part}")
        if dataset is not None
        else None
        for part, dataset in found.items()
    }
    info = {"location": location, "image_column": image, "label_column": label}
    return splits_of(classes, lists["train"], lists["val"], lists["test"], val_split, seed, info)


def _load(datasets: Any, location: str) -> tuple[Any, str]:
    """The data set (or dict of splits) at ``location``, and how to name it in messages."""
    path = Path(location)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(path)), f"data set {path}"
        files = _parquet_files(path, location)
        if files:
            return datasets.load_dataset("parquet", data_files=files), f"parquet files {location}"
        return datasets.load_dataset(location), f"data set '{location}'"
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise DataError(
            f"cannot read Hugging Face data set '{location}' ({' '.join(str(exc).split())[:160]}); "
            "give a save_to_disk folder, parquet files, or a name in the local cache "
            "(--data-opt download=true to download it)"
        ) from None


def _parquet_files(path: Path, location: str) -> dict[str, list[str]] | None:
    """Parquet files by split (a file named after a split is that split; others train)."""
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    else:
        files = sorted(glob.glob(location)) if any(c in location for c in "*?[") else []
        files = files or ([location] if path.suffix == ".parquet" and path.is_file() else [])
    if not files:
        return None
    by_split: dict[str, list[str]] = {}
    for file in files:
        stem = Path(file).stem.split("-")[0]
        split = next((s for names in SPLIT_NAMES.values() for s in names if stem == s), "train")
        by_split.setdefault(split, []).append(file)
    return by_split


def _first(features: Any, kind: type, option: str, where: str) -> str:
    """The first column whose feature is of ``kind``."""
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    if option == "label" and "label" in features:
        return "label"
    raise DataError(
        f"{where} has no {kind.__name__} column; name it with --data-opt {option}=COLUMN "
        f"(its columns: {', '.join(features)})"
    )


class _Read:
    """Reads the image in ``column`` of item ``index`` of a data set (picklable)."""

    def __init__(self, dataset: Any, column: str):
        self.dataset, self.column = dataset, column

    def __call__(self, index: int) -> Any:
        return self.dataset[index][self.column]


def _images(
    dataset: Any, image: str, label: str, to_index: dict[Any, int] | None, where: str
) -> IndexedImages:
    values = dataset[label]
    labels = tuple(int(v) if to_index is None else to_index[v] for v in values)
    return IndexedImages(_Read(dataset, image), tuple(range(len(labels))), labels, where)
