"""Which training images score a search's candidates: one held-out fifth of each class, or,
on few images, every image once over the folds of a cross-validation.

With a few dozen training images a held-out fifth is a handful of images, where one image
is several points of accuracy: on bench/quality.py's digits-fewshot (60 images) it was 10,
and the schedule that scored all 10 ended 1.5 points below the best on the validation
split. Cross-validation scores every training image once (each fold holds out a different
fifth) for :data:`FOLDS` times the training.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tlplug.data.folders import stratified_split
from tlplug.data.sources import DecodeError, Splits
from tlplug.errors import DataError, OptionError
from tlplug.recipe import AUTO
from tlplug.search.candidates import HOLD_OUT

FOLDS = round(1 / HOLD_OUT)  # a cross-validation's folds: each holds out a fifth
CROSS_VALIDATE_BELOW = 40  # held-out images under which the search cross-validates
HEADER = ["path", "label", "split"]


def choose_folds(folds: int | str, train_images: int) -> int:
    """The folds to score on: ``folds`` when a number; for ``auto``, :data:`FOLDS` when a
    held-out fifth of ``train_images`` is under :data:`CROSS_VALIDATE_BELOW` images, else 1."""
    if str(folds).strip().lower() == AUTO:
        return FOLDS if train_images * HOLD_OUT < CROSS_VALIDATE_BELOW else 1
    try:
        count = int(folds)
    except ValueError:
        count = 0
    if count < 1:
        raise OptionError(f"--folds {folds!r} is not a number of folds; give 1 to {FOLDS}, or auto")
    return min(count, FOLDS)


def assign_folds(labels: list[int], folds: int, seed: int) -> list[int | None]:
    """For each image (by its label), the fold that holds it out: 0 to ``folds - 1``, or
    None for an image every fold trains on. Seeded and stratified: each class is shuffled
    and dealt round the folds, starting where the previous class stopped so the folds stay
    even; a fold holds out at most all but one image of a class, and a class of one image
    is never held out. With one fold, the held-out images are the seeded fifth of each
    class that ``--val-split 0.2`` would hold out."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    found: list[int | None] = [None] * len(labels)
    if folds == 1:
        names = tuple(str(label) for label in sorted(by_class))
        grouped = {str(label): by_class[label] for label in by_class}
        _, held = stratified_split(grouped, names, HOLD_OUT, seed)
        for index, _ in held:
            found[index] = 0
        return found
    rng, turn = random.Random(seed), 0
    for label in sorted(by_class):
        members = list(by_class[label])
        if len(members) < 2:
            continue
        rng.shuffle(members)
        for position, index in enumerate(members):
            found[index] = (turn + position) % folds
        turn = (turn + len(members)) % folds
    return found


def write_folds(
    splits: Splits, folder: Path, folds: int, seed: int
) -> tuple[list[Path], list[list[str]]]:
    """Write one ``path,label,split`` manifest per fold that holds images out into
    ``folder`` (its held-out images ``val``, the rest ``train``); images of a source
    without files are saved as PNGs beside them. Return the manifests and the record the
    run directory keeps: every training image with the fold that holds it out (``val``:
    the one held-out split; ``fold1``...: a cross-validation's; ``train``: never held
    out), ``#INDEX`` for an image that has no file."""
    train, classes = splits.train, splits.classes
    held = assign_folds(list(train.labels), folds, seed)
    if not any(fold is not None for fold in held):
        raise DataError(f"{len(train)} training images are too few to hold out a search split")
    paths = getattr(train, "paths", None)
    rows, record = [], []
    for index, label in enumerate(train.labels):
        if paths is not None:
            path = str(Path(paths[index]).resolve())
        else:
            path = f"images/{index}.png"
            try:
                (folder / "images").mkdir(exist_ok=True)
                train.load(index).save(folder / path)
            except DecodeError:
                continue
        rows.append((path, classes[label], held[index]))
        fold = held[index]
        split = "train" if fold is None else "val" if folds == 1 else f"fold{fold + 1}"
        record.append([path if paths is not None else f"#{index}", classes[label], split])
    manifests = []
    for fold in sorted({f for f in held if f is not None}):  # a fold may hold none out
        manifest = folder / (f"fold{fold + 1}.csv" if folds > 1 else "holdout.csv")
        lines = [[p, c, "val" if f == fold else "train"] for p, c, f in rows]
        with open(manifest, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([HEADER, *sorted(lines, key=lambda r: r[2] != "train")])
        manifests.append(manifest)
    record.sort(key=lambda row: (row[2] != "train", row[2]))
    return manifests, [HEADER, *record]
