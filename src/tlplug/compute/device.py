"""Which device a run trains on."""

from __future__ import annotations

import torch

from tlplug.errors import TlplugError
from tlplug.recipe import AUTO


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA is a clear error."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TlplugError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)
