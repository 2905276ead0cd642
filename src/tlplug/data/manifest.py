"""A CSV manifest: one ``path,label[,split]`` row per image, paths relative to the CSV.

A header row is optional (a first row reading ``path,label...`` is one). ``split`` is
``train``, ``val`` (or ``valid``/``validation``) or ``test``; without the column, the
validation images are held out by ``--val-split``. Rows whose file is missing or does not
open as an image are left out and listed with their reason.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tlplug.data.folders import (
    DEFAULT_VAL_SPLIT,
    FileImages,
    files_digest,
    stratified_split,
)
from tlplug.data.images import check_image
from tlplug.data.sources import Skipped, Splits
from tlplug.errors import DataError

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FORMAT = "expected rows of path,label[,split] with split train, val or test"


def read_manifest(csv_path: Path, val_split: float | None, seed: int) -> Splits:
    """Read the images a CSV manifest lists."""
    if not csv_path.is_file():
        raise DataError(f"manifest {csv_path} does not exist")
    rows = _rows(csv_path)
    root = csv_path.parent
    found: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    skipped = []
    has_split = any(len(row) > 2 for _, row in rows)
    for line, row in rows:
        path_text, label = row[0].strip(), row[1].strip() if len(row) > 1 else ""
        split_text = row[2].strip().lower() if len(row) > 2 else "train"
        where = f"{csv_path}:{line}"
        if not path_text or not label:
            raise DataError(f"{where}: a row needs a path and a label; {FORMAT}")
        if split_text not in SPLITS:
            raise DataError(f"{where}: unknown split {row[2].strip()!r}; {FORMAT}")
        path = root / path_text
        reason = "file not found" if not path.is_file() else check_image(path)
        if reason:
            skipped.append(Skipped(str(path), reason))
            continue
        found[SPLITS[split_text]].setdefault(label, []).append(path)
    train = found["train"]
    if len(train) < 2:
        raise DataError(
            f"manifest {csv_path} has {len(train)} class(es) with usable training images; "
            "a classifier needs at least 2"
        )
    classes = tuple(sorted(train))
    for split in ("val", "test"):
        stray = sorted(set(found[split]) - set(classes))
        if stray:
            raise DataError(
                f"manifest {csv_path}: {split} label(s) {', '.join(stray)} have no usable "
                "training images; every class needs training images"
            )
    info = {"kind": "csv", "manifest": str(csv_path.resolve()), "seed": seed}
    pairs = {s: _pairs(found[s], classes) for s in found}
    if has_split and pairs["val"]:
        info["layout"] = "manifest splits"
        train_pairs, val_pairs = pairs["train"], pairs["val"]
    else:
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        train_pairs, val_pairs = stratified_split(train, classes, fraction, seed)
        info.update(
            layout="split", val_split=fraction, val_files_sha256=files_digest(val_pairs, root)
        )
    if not val_pairs:
        raise DataError(f"manifest {csv_path} has too few images to hold out a validation split")
    return Splits(
        classes,
        _images(train_pairs),
        _images(val_pairs),
        info,
        test=_images(pairs["test"]) if pairs["test"] else None,
        skipped=tuple(skipped),
    )


def _rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = [(n, row) for n, row in enumerate(csv.reader(handle), start=1) if any(row)]
    if rows and [c.strip().lower() for c in rows[0][1][:2]] == ["path", "label"]:
        rows = rows[1:]
    return rows


def _pairs(by_class: dict[str, list[Path]], classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    return [(p, classes.index(name)) for name in classes for p in sorted(by_class.get(name, []))]


def _images(pairs: list[tuple[Path, int]]) -> FileImages:
    return FileImages(tuple(p for p, _ in pairs), tuple(label for _, label in pairs))
