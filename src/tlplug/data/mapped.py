"""Tensors backed by a file: caches too large for memory, or shared by loader workers."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def mapped_tensor(path: Path, count: int, dtype: torch.dtype) -> torch.Tensor:
    """A new 1-D tensor of ``count`` zeros stored in the file ``path``; every process that
    maps the file sees the same values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.truncate(count * dtype.itemsize)
    return torch.from_file(os.fspath(path), shared=True, size=count, dtype=dtype)
