"""The run directory, a contract other tools read.

- ``config.json``: the recipe and everything resolved from it; rebuilds the model.
- ``metrics.jsonl``: one JSON object per epoch.
- ``summary.json``: the outcome (best and final accuracy, classes, sizes, time).
- ``model.safetensors``: the best weights, keys ``backbone.*`` (provider names) and ``head.*``.
- ``resume.safetensors``: the state after the last finished epoch (:mod:`tlplug.rundir.checkpoint`),
  with the weights its stage keeps frozen in a hidden part file beside it; removed when the
  run finishes unless it is kept (``--keep-state``).
- ``val_images.csv``, ``train_images.csv``: the images held out for validation and those
  trained on (``path,class``).
- ``lr_find.png``, ``lr_find.json``: with ``--lr auto``, the range test that chose the LR.

Files are written whole through a temporary file and a rename, so a reader never sees half
of one. A directory is only claimed once the run is certain to start, and a run it held
(``--overwrite``) is moved aside, not deleted, until the new run has kept its first epoch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from tlplug.errors import TlplugError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WEIGHTS = "model.safetensors"
RESUME = "resume.safetensors"
VAL_LIST = "val_images.csv"
TRAIN_LIST = "train_images.csv"
FROZEN_PART = ".resume-frozen-{}.safetensors"  # the resume state's frozen weights, per stage
PLOTS = ("curves.png", "confusion.png", "schedule.png")  # written by the plots plugin
LR_FIND = ("lr_find.png", "lr_find.json")  # the range test of --lr auto
REPLACED = ".tlplug-replaced"  # the run being replaced, until the new one keeps an epoch
RUN_FILES = (CONFIG, METRICS, SUMMARY, WEIGHTS, RESUME, VAL_LIST, TRAIN_LIST, *PLOTS, *LR_FIND)


def default_run_dir(backbone: str, root: Path = Path("runs")) -> Path:
    """A new directory under ``runs/`` named by time and backbone."""
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", backbone)
    path, n = root / stem, 1
    while path.exists():
        n += 1
        path = root / f"{stem}-{n}"
    return path


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse a directory that holds anything unless ``overwrite`` and it is a tlplug run,
    or it is a tlplug run that kept nothing (stopped before its first epoch ended)."""
    if path.exists() and not path.is_dir():
        raise TlplugError(f"--out {path} is a file; choose a directory")
    if not path.exists() or not any(path.iterdir()):
        return
    if (path / CONFIG).is_file() and not any((path / f).exists() for f in (WEIGHTS, RESUME)):
        return  # a run that ended before its first epoch: nothing in it to keep
    if not overwrite:
        raise TlplugError(
            f"run directory {path} is not empty; pass --resume {path} to continue the run in "
            "it, --overwrite to replace it, or choose another --out"
        )
    if not (path / CONFIG).is_file():
        raise TlplugError(
            f"--overwrite refused: {path} is not empty and holds no tlplug run ({CONFIG} missing)"
        )


def claim_run_dir(path: Path, overwrite: bool) -> None:
    """Create ``path``, or move what it holds (a run replaced with ``overwrite``, or one
    that kept nothing) aside into :data:`REPLACED` until the new run keeps its first epoch
    (:func:`keep_replacement`); a run that fails before that gives it back
    (:func:`restore_replaced`)."""
    check_run_dir(path, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    aside = path / REPLACED
    if aside.exists():  # an earlier replacement was killed before it kept an epoch
        _empty(path, but=REPLACED)
        return
    held = [entry for entry in path.iterdir()]
    if held:
        aside.mkdir()
        for entry in held:
            entry.rename(aside / entry.name)


def keep_replacement(path: Path) -> None:
    """The new run in ``path`` kept an epoch: drop the replaced run's files, and give back
    what else the folder held (a user's own files) where the new run has no file of that
    name."""
    aside = path / REPLACED
    if not aside.is_dir():
        return
    ours = set(RUN_FILES)
    for entry in aside.iterdir():
        if entry.name in ours or entry.name.startswith(".") or (path / entry.name).exists():
            _remove(entry)
        else:
            entry.rename(path / entry.name)
    aside.rmdir()


def restore_replaced(path: Path) -> None:
    """Put back the run that a failed run in ``path`` was to replace (nothing when none)."""
    aside = path / REPLACED
    if not aside.is_dir():
        return
    _empty(path, but=REPLACED)
    for entry in aside.iterdir():
        entry.rename(path / entry.name)
    aside.rmdir()


def _empty(path: Path, but: str) -> None:
    for entry in path.iterdir():
        if entry.name != but:
            _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename."""
    write_atomic(path, lambda out: out.write(text))


def write_atomic(path: Path, write: Callable[[IO], Any], mode: str = "w") -> None:
    """Call ``write`` with a temporary file beside ``path`` (opened in ``mode``), then fsync
    it and rename it to ``path``: a reader sees the old file or the whole new one."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"newline": ""})) as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        publish(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def publish(temp: str, path: Path) -> None:
    """Rename the finished temporary file ``temp`` to ``path``, readable as the umask allows
    (a temporary file starts private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path``. It reaches the disk when :func:`sync` is called on
    ``path``, as the resume state's write does before the state is published."""
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def sync(path: Path) -> None:
    """Flush ``path``'s written data to disk (nothing when there is no such file)."""
    if not path.exists():
        return
    with open(path, "rb") as written:
        os.fsync(written.fileno())


def truncate_metrics(path: Path, epochs: int) -> list[dict[str, Any]]:
    """Keep the records of the first ``epochs`` epochs in ``path`` (atomically); return them.

    A run killed after writing an epoch's record but before its resume state has one record
    too many; resuming drops it and trains that epoch again.
    """
    records = read_metrics(path, epochs)
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def read_metrics(path: Path, epochs: int) -> list[dict[str, Any]]:
    """The records of the first ``epochs`` epochs in ``path`` (none if it is missing)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("epoch", 0) <= epochs:
                records.append(record)
    return records


def read_json(path: Path) -> Any:
    """Read a JSON file of a run directory, with a clear error if it is missing or broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TlplugError(
            f"{path.parent} is not a tlplug run directory ({path.name} missing)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TlplugError(f"{path} is not valid JSON ({exc})") from None
