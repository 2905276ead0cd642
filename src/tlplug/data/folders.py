"""ImageFolder-style data: ``DIR/train/<class>/`` + ``DIR/val/<class>/``, or ``DIR/<class>/``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from PIL import Image, UnidentifiedImageError

from tlplug.errors import DataError

if TYPE_CHECKING:
    from tlplug.data.sources import Splits

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
VAL_NAMES = ("val", "valid", "validation")
DEFAULT_VAL_SPLIT = 0.2

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
        """Decode image ``index`` to RGB."""
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(
                f"cannot read image {path} ({exc}); remove or replace the file"
            ) from None


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


def scan_classes(root: Path) -> dict[str, list[Path]]:
    """Map each class folder directly under ``root`` to its images; empty classes are left out."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(folder)
        if images:
            classes[folder.name] = images
    return classes


def read_folder(root: Path, val_split: float | None, seed: int) -> Splits:
    """Read a data folder in either layout; split train/val when there is no val folder."""
    from tlplug.data.sources import Splits

    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {state}; {LAYOUT}")
    train_dir = root / "train"
    base = train_dir if train_dir.is_dir() else root
    train = scan_classes(base)
    if len(train) < 2:
        found = f"found {len(train)} class folder(s) with images in {base}"
        raise DataError(f"need at least 2 classes, {found}; {LAYOUT}")
    classes = tuple(sorted(train))
    val_dirs = [root / n for n in VAL_NAMES if (root / n).is_dir()] if base is train_dir else []
    info = {"kind": "folder", "root": str(root.resolve()), "seed": seed}
    if val_dirs:
        val_dir = val_dirs[0]
        val = scan_classes(val_dir)
        stray = sorted(set(val) - set(classes))
        if stray:
            raise DataError(
                f"class folder(s) {', '.join(stray)} in {val_dir} have no images in {train_dir}; "
                "every validation class needs training images"
            )
        if not val:
            raise DataError(f"validation folder {val_dir} has no images; {LAYOUT}")
        info.update(layout="train/val", val_dir=str(val_dir.resolve()))
        train_files, val_files = _flatten(train, classes), _flatten(val, classes)
    else:
        fraction = val_split or DEFAULT_VAL_SPLIT
        info.update(layout="split", val_split=fraction)
        train_files, val_files = stratified_split(train, classes, fraction, seed)
        if not val_files:
            raise DataError(
                f"too few images in {base} to hold out a validation split; add a val/ folder"
            )
    return Splits(classes, _images(train_files), _images(val_files), info)


def stratified_split(
    by_class: dict[str, list[Path]], classes: tuple[str, ...], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split each class by ``fraction`` with a seeded shuffle; every class keeps a train image."""
    rng = random.Random(seed)
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(by_class[name])
        rng.shuffle(paths)
        count = min(len(paths) - 1, max(1, round(len(paths) * fraction))) if len(paths) > 1 else 0
        val += [(p, label) for p in sorted(paths[:count])]
        train += [(p, label) for p in sorted(paths[count:])]
    return train, val


def _flatten(by_class: dict[str, list[Path]], classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    return [(p, classes.index(name)) for name in sorted(by_class) for p in by_class[name]]


def _images(pairs: list[tuple[Path, int]]) -> FileImages:
    return FileImages(tuple(p for p, _ in pairs), tuple(label for _, label in pairs))
