"""The run directory: its layout, config record, checkpoints, weights, summary and resume.

The file names of the layout are the contract other tools read; plugins take them from
here (``from tlplug import rundir``; ``rundir.SUMMARY``)."""

from tlplug.rundir.layout import (
    CONFIG,
    METRICS,
    PLOTS,
    RESUME,
    SUMMARY,
    TRAIN_LIST,
    VAL_LIST,
    WEIGHTS,
)

__all__ = ["CONFIG", "METRICS", "PLOTS", "RESUME", "SUMMARY", "TRAIN_LIST", "VAL_LIST", "WEIGHTS"]
