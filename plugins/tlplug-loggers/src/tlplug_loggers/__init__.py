"""tlplug-loggers: TensorBoard and MLflow loggers for tlplug, as a tlplug plugin.

Installed, it is found through the ``tlplug`` entry point group; pick the loggers with
``--logger tensorboard``, ``--logger mlflow`` or ``Engine.from_plugins(logger=...)``.
TensorBoard and MLflow are imported when a run uses their logger, not before.
"""

from .mlflow_log import MlflowLog, mlflow_logger
from .plugin import tlplug_register_loggers
from .tensorboard_log import TensorBoardLog, tensorboard_logger

__version__ = "0.1.0"

TLPLUG_HOOK_API = "1.1"

__all__ = [
    "TLPLUG_HOOK_API",
    "MlflowLog",
    "TensorBoardLog",
    "__version__",
    "mlflow_logger",
    "tensorboard_logger",
    "tlplug_register_loggers",
]
