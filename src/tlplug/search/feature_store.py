"""Backbone features kept on disk between ``tlplug rank`` (and ``tlplug search``) calls.

An entry holds one backbone's features of a data set's training and validation images, and
what the rank measured with them (parameters, width, images/s). It is found by a key that
names everything the features depend on:

- the backbone name and its provider options;
- its weights: the SHA-256 of a weights file's content, ``pretrained`` (the provider's
  weights for that name; a name without a tag means the provider's default tag), or, for
  random weights, the seed they are drawn with;
- the data: the source's description, the classes, and each split's image list (path, size
  and modification time of each file; the index where a source makes its images) and labels;
- the image size asked for (else the source's or the backbone's own), the precision and the
  device type, and the version of this format.

A hit loads the tensors and builds no model. Entries live in :func:`cache_dir`; each is one
``<key>.safetensors`` file of N x D numbers (4 bytes each in fp32, 2 in bf16) per image,
written whole or not at all. Nothing is evicted: delete the folder, or files in it, to free
the space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlplug.rundir.layout import write_atomic

if TYPE_CHECKING:  # the CLI reads ENV without loading torch
    import torch

    from tlplug.data.sources import ImageList, Splits

ENV = "TLPLUG_FEATURE_CACHE"  # overrides the default folder
FORMAT = 1  # bumped when what an entry holds, or how features are computed, changes
_SPLITS = ("train", "val")


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    """Where entries live: ``given`` (``--cache-dir``), else ``$TLPLUG_FEATURE_CACHE``, else
    ``tlplug/features`` in the user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    if given is not None:
        return Path(given)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tlplug" / "features"


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_digest(splits: Splits) -> str:
    """A digest of the training and validation images and labels of ``splits``."""
    digest = hashlib.sha256()
    digest.update(json.dumps([splits.info, splits.classes], sort_keys=True, default=str).encode())
    for name in _SPLITS:
        images: ImageList = getattr(splits, name)
        digest.update(f"\n{name} {len(images)}\n".encode())
        digest.update(json.dumps(list(images.labels)).encode())
        for path in getattr(images, "paths", None) or ():
            digest.update(_file_mark(path).encode())
    return digest.hexdigest()


def _file_mark(path: str | os.PathLike) -> str:
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError):
        return f"{path}\n"
    return f"{os.path.abspath(path)} {stat.st_size} {stat.st_mtime_ns}\n"


def entry_key(fields: dict[str, Any]) -> str:
    """The key of the entry described by ``fields`` (JSON-ready), in hex."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(folder: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors (``train``, ``train_labels``, ``val``, ``val_labels``) and the record of
    entry ``key``, or None when there is none (or it cannot be read)."""
    from safetensors import SafetensorError, safe_open

    path = folder / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads(handle.metadata()["record"])
            names = handle.keys()  # a safe_open handle is not iterable
            tensors = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError, KeyError, ValueError):
        return None  # a damaged entry is computed again, and replaced
    return tensors, record


def store(folder: Path, key: str, tensors: dict[str, torch.Tensor], record: dict) -> Path:
    """Write entry ``key`` (whole or not at all) and return its path."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.safetensors"
    data = save(
        {k: v.contiguous() for k, v in tensors.items()},
        metadata={"record": json.dumps(record, default=str)},
    )
    write_atomic(path, lambda out: out.write(data), mode="wb")
    return path
