"""The hook implementation: the ``tensorboard`` and ``mlflow`` loggers."""

from __future__ import annotations

from tlplug import hookimpl

from .mlflow_log import mlflow_logger
from .tensorboard_log import tensorboard_logger


@hookimpl
def tlplug_register_loggers(register):
    """Register ``tensorboard`` and ``mlflow``."""
    register("tensorboard", tensorboard_logger)
    register("mlflow", mlflow_logger)
