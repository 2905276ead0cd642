"""The ``tensorboard`` logger: TensorBoard event files in the run directory.

Written with ``torch.utils.tensorboard.SummaryWriter`` rather than tensorboardX: it ships
with torch, which tlplug already needs, and writes through the ``tensorboard`` package's
own protobufs, so the only extra dependency is the package that reads the files back
(TensorBoard itself, and the ``EventAccumulator`` the tests use); tensorboardX would add a
second copy of those protobufs and still need ``tensorboard`` to look at the result.

Every scalar is on one step axis, the run's optimizer step (``run.step``): a step's loss at
its own step, an epoch's numbers at the step that ended the epoch. One axis is what lets a
resumed run drop what its interrupted predecessor wrote after the last finished epoch:
the writer starts with ``purge_step = run.step + 1``, a ``SessionLog.START`` event at that
step, on which TensorBoard discards every earlier-written event at or after it, whatever
its tag, so the curves continue without a doubled stretch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlplug import TlplugError

from .common import CONFIG_KEY, epoch_numbers, flat_recipe

EVENTS = "events.out.tfevents.*"  # the files a SummaryWriter writes, and all this logger deletes
STEP_LOSS = "step/train_loss"
# The epoch numbers the HParams dashboard shows next to the recipe (when the run has them).
HPARAM_METRICS = ("epoch/val_acc", "epoch/val_loss", "epoch/train_acc", "epoch/train_loss")


def tensorboard_logger(*, dir: str = "tensorboard", steps: bool = True, hparams: bool = True):
    """TensorBoard event files: each step's loss, each epoch's losses, accuracies, LRs and
    times, the recipe as hyperparameters.

    ``dir`` is the folder for the event files, relative to the run directory; one outside
    it (an absolute path) gets a subfolder per run, named as the run directory.
    ``steps`` adds the training loss of every step (``step/train_loss``); ``hparams`` writes
    the recipe for TensorBoard's HParams and Text dashboards when the run starts.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard raises this when tensorboard is missing
        raise TlplugError(
            "the tensorboard logger needs the tensorboard package: pip install tensorboard"
        ) from None
    return (TensorBoardStepLog if steps else TensorBoardLog)(SummaryWriter, dir, hparams)


class TensorBoardLog:
    """Writes one run's event files; a fresh run starts the folder anew, a resumed one
    continues after its last finished epoch."""

    def __init__(self, writer_type: Any, folder: str, hparams: bool):
        self.writer_type, self.folder, self.hparams = writer_type, folder, hparams
        self.writer = None

    def run_start(self, run) -> None:
        self.path = folder_of(run.run_dir, self.folder)
        resumed = run.epoch > 0
        old = sorted(self.path.glob(EVENTS)) if self.path.is_dir() else []
        if not resumed:  # fresh, also over an --overwrite: the previous run's events go
            for file in old:
                file.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        # Resumed: discard events at steps after the last finished epoch (see the module).
        purge = run.step + 1 if resumed else None
        self.writer = self.writer_type(str(self.path), purge_step=purge, flush_secs=30)
        if self.hparams and not (resumed and old):  # a resumed run has them from its start
            self._write_recipe(run)
        run.config.setdefault(CONFIG_KEY, {})["tensorboard"] = {"dir": str(self.path.resolve())}

    def epoch_end(self, run, record) -> None:
        for key, sub, value in epoch_numbers(record):
            tag = f"lr/{sub}" if key == "lr" else f"epoch/{key}" + (f"/{sub}" if sub else "")
            self.writer.add_scalar(tag, value, run.step)
        self.writer.add_scalar("epoch/epoch", record["epoch"], run.step)
        self.writer.flush()

    def run_end(self, run, summary) -> None:
        if self.writer is None:
            return
        try:
            for key in ("best_val_acc", "best_epoch", "final_val_acc", "test_acc", "test_loss"):
                if isinstance(summary.get(key), (int, float)):
                    self.writer.add_scalar(f"summary/{key}", summary[key], run.step)
            self._end_session("STATUS_SUCCESS")
        finally:
            self.writer.close()

    def run_error(self, run, reason, error) -> None:
        if self.writer is None:  # the run failed before this logger started
            return
        try:
            # No HParams session end: TensorBoard keeps a tag's first one, and the session
            # may yet end well when the run is resumed.
            self.writer.add_text("run/error", f"{reason}: {error}", run.step)
        finally:
            self.writer.close()

    def _write_recipe(self, run) -> None:
        from torch.utils.tensorboard.summary import hparams

        recipe = run.config.get("recipe", {})
        values = {
            k: v if isinstance(v, (int, float, str)) else str(v)
            for k, v in flat_recipe(recipe).items()
        }
        experiment, start, _ = hparams(values, dict.fromkeys(HPARAM_METRICS, 0.0))
        self.writer.file_writer.add_summary(experiment, 0)
        self.writer.file_writer.add_summary(start, 0)
        text = json.dumps(recipe, indent=2)
        self.writer.add_text("recipe", "    " + text.replace("\n", "\n    "), 0)  # as code

    def _end_session(self, status: str) -> None:
        """Write the HParams session's end, with ``status`` (``STATUS_SUCCESS``)."""
        if not self.hparams:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams.api_pb2 import Status
        from tensorboard.plugins.hparams.metadata import (
            PLUGIN_DATA_VERSION,
            PLUGIN_NAME,
            SESSION_END_INFO_TAG,
        )
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

        content = HParamsPluginData(
            session_end_info=SessionEndInfo(status=Status.Value(status)),
            version=PLUGIN_DATA_VERSION,
        )
        metadata = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(
                plugin_name=PLUGIN_NAME, content=content.SerializeToString()
            )
        )
        summary = Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
        self.writer.file_writer.add_summary(summary, 0)


def folder_of(run_dir: Path, folder: str) -> Path:
    """Where a run's event files go: ``folder`` in the run directory, or, when it leads out
    of it (an absolute path, ``../tb``), the run directory's name in ``folder``, so that
    runs sharing a folder each have their own and a fresh run deletes only its own files."""
    path = Path(run_dir, folder)
    inside = Path(run_dir).resolve()
    if not path.resolve().is_relative_to(inside):
        path = path / inside.name
    return path


class TensorBoardStepLog(TensorBoardLog):
    """A TensorBoard log that also records every training step's loss."""

    def step_end(self, run, step) -> None:
        self.writer.add_scalar(STEP_LOSS, step.loss, step.global_step)
