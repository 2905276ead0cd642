"""ImageFolder-style data: ``DIR/train/<class>/`` + ``DIR/val/<class>/`` (+ ``DIR/test/``),
or ``DIR/<class>/`` split by ``--val-split``.

Only files with an image suffix are read (any case); hidden files and folders and other
files are ignored. Each image file's header is checked once up front: a file that does
not open as an image is left out and listed with its reason.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import attrs
from PIL import Image

from tlplug.data.images import DECODE_ERRORS, cannot_decode, check_image, open_rgb
from tlplug.data.sources import Skipped, Splits
from tlplug.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test",)
DEFAULT_VAL_SPLIT = 0.2

Item = TypeVar("Item")

LAYOUT = (
    "expected DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg, "
    "or DIR/<class>/*.jpg with --val-split"
)


@attrs.frozen
class FileImages:
    """Images on disk with their labels."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` to RGB; DataError when the file cannot be decoded."""
        path = self.paths[index]
        try:
            return open_rgb(path)
        except DECODE_ERRORS as exc:
            raise cannot_decode(str(path), exc) from None


def is_image(path: Path) -> bool:
    """True for a visible file with an image suffix (any case)."""
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted, hidden folders skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative):
            continue
        if is_image(path):
            found.append(path)
    return found


@attrs.define
class Scan:
    """Usable images per class folder, and what was left out."""

    by_class: dict[str, list[Path]] = attrs.field(factory=dict)
    skipped: list[Skipped] = attrs.field(factory=list)
    empty: dict[str, int] = attrs.field(factory=dict)  # class -> files skipped in it


def scan_classes(root: Path) -> Scan:
    """Check every image under each class folder directly below ``root``."""
    scan = Scan()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        usable, bad = [], 0
        for path in list_images(folder):
            reason = check_image(path)
            if reason is None:
                usable.append(path)
            else:
                scan.skipped.append(Skipped(str(path), reason))
                bad += 1
        if usable:
            scan.by_class[folder.name] = usable
        else:
            scan.empty[folder.name] = bad
    return scan


def read_folder(root: Path, val_split: float | None, seed: int) -> Splits:
    """Read a data folder in either layout; split train/val when there is no val folder."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {state}; {LAYOUT}")
    train_dir = root / "train"
    base = train_dir if train_dir.is_dir() else root
    train = scan_classes(base)
    warnings = [_left_out(base, name, skipped) for name, skipped in train.empty.items()]
    if len(train.by_class) < 2:
        found = f"found {len(train.by_class)} class folder(s) with usable images in {base}"
        raise DataError(f"need at least 2 classes, {found}; {LAYOUT}")
    classes = tuple(sorted(train.by_class))
    info = {"kind": "folder", "root": str(root.resolve()), "seed": seed}
    skipped = list(train.skipped)
    extra = {}
    for names, split in ((VAL_NAMES, "val"), (TEST_NAMES, "test")):
        folder = _first_dir(root, names) if base is train_dir else None
        if folder is None:
            continue
        scan = scan_classes(folder)
        skipped += scan.skipped
        stray = sorted(set(scan.by_class) - set(classes))
        if stray:
            raise DataError(
                f"class folder(s) {', '.join(stray)} in {folder} have no usable images in "
                f"{train_dir}; every {split} class needs training images"
            )
        if not scan.by_class:
            raise DataError(f"{split} folder {folder} has no usable images; {LAYOUT}")
        extra[split] = _images(_flatten(scan.by_class, classes))
        info[f"{split}_dir"] = str(folder.resolve())
    train_files = _flatten(train.by_class, classes)
    if "val" in extra:
        info["layout"] = "train/val"
        train_images, val_images = _images(train_files), extra["val"]
    else:
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        kept, held = stratified_split(train.by_class, classes, fraction, seed)
        if not held:
            raise DataError(
                f"too few images in {base} to hold out a validation split; add a val/ folder"
            )
        info.update(layout="split", val_split=fraction, val_files_sha256=files_digest(held, root))
        train_images, val_images = _images(kept), _images(held)
    return Splits(
        classes,
        train_images,
        val_images,
        info,
        test=extra.get("test"),
        skipped=tuple(skipped),
        warnings=tuple(warnings),
    )


def stratified_split(
    by_class: dict[str, list[Item]], classes: tuple[str, ...], fraction: float, seed: int
) -> tuple[list[tuple[Item, int]], list[tuple[Item, int]]]:
    """Split each class's items (files, or a data set's indices) by ``fraction`` with a
    seeded shuffle into (item, label) pairs; every class keeps a training item."""
    rng = random.Random(seed)
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(by_class[name])
        rng.shuffle(paths)
        count = min(len(paths) - 1, max(1, round(len(paths) * fraction))) if len(paths) > 1 else 0
        count = count if fraction > 0 else 0
        val += [(p, label) for p in sorted(paths[:count])]
        train += [(p, label) for p in sorted(paths[count:])]
    return train, val


def files_digest(pairs: Iterable[tuple[Path, int]], root: Path) -> str:
    """A digest of which files (relative to ``root``) hold which label: what a split chose."""
    lines = sorted(f"{p.relative_to(root).as_posix()}\t{label}" for p, label in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _left_out(base: Path, name: str, skipped: int) -> str:
    why = f"its {skipped} image file(s) could not be read" if skipped else "it has no images"
    return f"class folder {base / name} left out: {why}"


def _flatten(by_class: dict[str, list[Path]], classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    return [(p, classes.index(name)) for name in sorted(by_class) for p in by_class[name]]


def _images(pairs: list[tuple[Path, int]]) -> FileImages:
    return FileImages(tuple(p for p, _ in pairs), tuple(label for _, label in pairs))
