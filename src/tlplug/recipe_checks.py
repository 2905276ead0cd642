"""The values of a recipe's general settings that no run can use, each refused with a line
that names the setting as the user gave it (``--epochs`` on the command line, ``epochs``
in Python)."""

from __future__ import annotations

from typing import Any

from tlplug.errors import OptionError, flag


def check_settings(settings: Any) -> None:
    """Raise :class:`OptionError` for the first value of ``settings`` no run can use."""
    positive = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "val_every": settings.val_every,
    }
    for name, value in positive.items():
        if value != "auto" and value <= 0:  # --lr auto: a range test chooses it
            raise OptionError(f"{flag(name)} must be positive, got {value}")
    if settings.img_size is not None and settings.img_size < 16:
        raise OptionError(f"{flag('img_size')} must be at least 16, got {settings.img_size}")
    if settings.val_split is not None and not 0 <= settings.val_split < 1:
        raise OptionError(
            f"{flag('val_split')} must be at least 0 (0: no validation) and below 1, "
            f"got {settings.val_split}"
        )
    if settings.cache_views is not None and settings.cache_views < 1:
        raise OptionError(f"{flag('cache_views')} must be at least 1, got {settings.cache_views}")
    if settings.accumulate < 1:
        raise OptionError(f"{flag('accumulate')} must be at least 1, got {settings.accumulate}")
    if settings.ema is not None and not 0 < settings.ema < 1:
        raise OptionError(
            f"{flag('ema')} must be a decay between 0 and 1 (0.999), got {settings.ema}"
        )
    if settings.patience is not None and settings.patience < 1:
        raise OptionError(f"{flag('patience')} must be at least 1, got {settings.patience}")
    if settings.val_split == 0 and (settings.patience or settings.ema):
        used = flag("patience") if settings.patience else flag("ema")
        raise OptionError(f"{used} needs validation; drop it or {flag('val_split', 0)}")
    if settings.lr_decay is not None and not 0 < settings.lr_decay <= 1:
        raise OptionError(f"{flag('lr_decay')} must be in (0, 1], got {settings.lr_decay}")
    if settings.lr_decay is not None and settings.lr_mult:
        raise OptionError(f"give {flag('lr_decay')} or {flag('lr_mult')}, not both")
    if any(not m >= 0 for m in settings.lr_mult):
        raise OptionError(
            f"{flag('lr_mult')} multipliers must be >= 0, got {list(settings.lr_mult)}"
        )
    if settings.max_groups is not None and settings.max_groups < 1:
        raise OptionError(f"{flag('max_groups')} must be at least 1, got {settings.max_groups}")
    if settings.weight_decay is not None and settings.weight_decay < 0:
        raise OptionError(f"{flag('weight_decay')} must be >= 0, got {settings.weight_decay}")
    if settings.skip_nonfinite < 0:
        raise OptionError(f"{flag('skip_nonfinite')} must be >= 0, got {settings.skip_nonfinite}")
    if settings.workers is not None and settings.workers < 0:
        raise OptionError(f"{flag('workers')} must be >= 0, got {settings.workers}")
    if settings.weights is not None and "\x00" in settings.weights:
        raise OptionError(f"{flag('weights')} contains a NUL byte; give the path of a weights file")
    if not 0 <= settings.label_smoothing < 1:
        raise OptionError(
            f"{flag('label_smoothing')} must be in [0, 1), got {settings.label_smoothing}"
        )
    if settings.device not in ("auto", "cpu") and not settings.device.startswith("cuda"):
        raise OptionError(f"{flag('device')} must be auto, cpu or cuda, got {settings.device!r}")
