"""tlplug-regularize: training-loss regularizers for transfer learning, as a tlplug plugin.

``l2-sp`` (Li et al. 2018), ``bss`` (Chen et al. 2019) and ``delta`` (Li et al. 2019,
without attention). Installed, it is found through the ``tlplug`` entry point group; pick
the regularizers with ``--regularizer NAME`` or ``Engine.from_plugins(regularizer=...)``.
"""

from .bss import BSS, bss
from .delta import Delta, default_layers, delta
from .l2sp import L2SP, l2_sp
from .plugin import (
    tlplug_epoch_end,
    tlplug_register_regularizers,
    tlplug_run_start,
)

__version__ = "0.1.0"

TLPLUG_HOOK_API = "1.2"  # run.penalties, keeps_probe

__all__ = [
    "BSS",
    "L2SP",
    "TLPLUG_HOOK_API",
    "Delta",
    "__version__",
    "bss",
    "default_layers",
    "delta",
    "l2_sp",
    "tlplug_epoch_end",
    "tlplug_register_regularizers",
    "tlplug_run_start",
]
