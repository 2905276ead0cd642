"""Peak memory per epoch: CUDA's max allocated on a GPU, the process's peak RSS on a CPU."""

from __future__ import annotations

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def reset_peak(device: torch.device) -> None:
    """Start measuring a new peak from now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as refs:
            refs.write("5")  # Linux: reset the peak resident set size (VmHWM)
    except OSError:
        pass


def peak_mb(device: torch.device) -> float | None:
    """The peak since :func:`reset_peak` in MiB, or None where it cannot be read."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
