"""The ``mlflow`` logger: one MLflow run per tlplug run.

It talks to the tracking store through an ``MlflowClient`` of its own rather than MLflow's
fluent API (``mlflow.start_run``): the fluent API keeps a process-wide active run and
tracking URI, which a user's own MLflow code in the same process would share with it.

Where the MLflow run lives (tracking URI, experiment, run id) goes into config.json when a
fresh run starts, under ``tlplug-loggers.mlflow``; a resumed run reads it back and continues
that MLflow run.
"""

from __future__ import annotations

import importlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from tlplug import OptionError, TlplugError, rundir

from .common import CONFIG_KEY, epoch_numbers, flat_recipe

#: The default store, in the folder that holds the run directory (``runs/`` by default).
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
STEP_LOSS = "train_loss_step"
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "final_val_acc", "test_acc", "test_loss")
ERROR_TAGS = ("tlplug.error_reason", "tlplug.error")
MAX_TAG_VALUE = 5000
# MLflow's own limits for one log_batch call.
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


def mlflow_logger(
    *,
    tracking_uri: str = "",
    experiment: str = "tlplug",
    run_name: str = "",
    steps: bool = False,
    artifacts: bool = True,
    model: bool = True,
):
    """MLflow tracking: one MLflow run per tlplug run, with the recipe as parameters, each
    epoch's numbers as metrics and the run's files as artifacts.

    ``tracking_uri``: where to log; empty means ``MLFLOW_TRACKING_URI`` when set, else a
    sqlite store ``mlflow.db`` (artifacts in ``mlartifacts/``) in the folder that holds the
    run directory. ``experiment``: the MLflow experiment, made if missing. ``run_name``:
    the MLflow run's name (default: the run directory's name). ``steps`` adds every
    step's training loss (``train_loss_step``); ``artifacts`` logs config.json,
    metrics.jsonl and summary.json at the end, ``model`` model.safetensors.
    """
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TlplugError("the mlflow logger needs MLflow: pip install mlflow") from None
    if not experiment.strip():
        raise OptionError("logger 'mlflow' option 'experiment' must not be empty")
    log_type = MlflowStepLog if steps else MlflowLog
    return log_type(MlflowClient, tracking_uri, experiment, run_name, artifacts, model)


class MlflowLog:
    """Logs one tlplug run to one MLflow run, continued when the tlplug run resumes."""

    def __init__(
        self,
        client_type: Any,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifacts: bool,
        model: bool,
    ):
        self.client_type, self.tracking_uri = client_type, tracking_uri
        self.experiment, self.run_name = experiment, run_name
        self.artifacts, self.model = artifacts, model
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[Any] = []  # the steps of the epoch in progress

    # --- the logger's methods ---

    def run_start(self, run) -> None:
        ours = run.config.setdefault(CONFIG_KEY, {})
        saved = ours.get("mlflow") if run.epoch > 0 else None
        if saved:
            self._continue(run, saved)
        else:  # fresh (an --overwrite too: a new MLflow run), or resumed without one
            ours["mlflow"] = self._create(run)

    def epoch_end(self, run, record) -> None:
        from mlflow.entities import Metric

        now, epoch = _now(), record["epoch"]
        metrics = [
            Metric(_name(key if sub is None else f"{key}_{sub}"), value, now, epoch)
            for key, sub, value in epoch_numbers(record)
        ]
        self._log_metrics([*self.pending, *metrics])
        self.pending = []

    def run_end(self, run, summary) -> None:
        # The training is over and summary.json not yet written: a store that fails now is
        # a warning, not an error that would cost the run its summary.json.
        if self.run_id is None:
            return
        try:
            self._finish(run, summary)
        except Exception as exc:
            warnings.warn(f"mlflow logger: logging the end of the run failed: {exc}", stacklevel=2)
            self._terminate("FAILED")

    def run_error(self, run, reason, error) -> None:
        self.pending = []  # the unfinished epoch's steps: a resumed run trains it again
        if self.run_id is None:
            return
        try:
            message = " ".join(str(error).split()) or type(error).__name__
            self.client.set_tag(self.run_id, ERROR_TAGS[0], reason)
            self.client.set_tag(self.run_id, ERROR_TAGS[1], message[:MAX_TAG_VALUE])
        except Exception as exc:
            warnings.warn(f"mlflow logger: logging the run's error failed: {exc}", stacklevel=2)
        self._terminate("FAILED")

    # --- the MLflow run ---

    def _create(self, run) -> dict[str, str]:
        from mlflow.entities import Param

        from . import __version__

        uri, artifact_location = self._store(run)
        self.client = self._connect(uri)
        experiment_id = self._experiment(uri, artifact_location)
        tags = {
            "tlplug.version": run.config.get("tlplug_version", ""),
            "tlplug.model.backbone": run.recipe.backbone,
            "tlplug.run_dir": str(Path(run.run_dir).resolve()),
            "tlplug-loggers.version": __version__,
        }
        name = self.run_name or Path(run.run_dir).name
        self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        limit = _param_limit()
        params = [
            Param(_name(key), str(value)[:limit])
            for key, value in flat_recipe(run.config.get("recipe", {})).items()
        ]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAMS_PER_BATCH])
        for record in run.history:  # a resumed run logged for the first time: its past
            self.epoch_end(run, record)
        return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id}

    def _continue(self, run, saved: dict[str, str]) -> None:
        uri, self.run_id = saved["tracking_uri"], saved["run_id"]
        self.client = self._connect(uri)
        try:
            found = self.client.get_run(self.run_id)
        except Exception as exc:
            raise TlplugError(
                f"mlflow logger: cannot continue MLflow run {self.run_id} in {uri}: "
                f"{_one_line(exc)}"
            ) from None
        self.client.update_run(self.run_id, status="RUNNING")
        for key in ERROR_TAGS:  # the error that stopped it is behind it now
            if key in found.data.tags:
                self.client.delete_tag(self.run_id, key)
        self.client.set_tag(self.run_id, "tlplug.resumed_after_epoch", str(run.epoch))

    def _finish(self, run, summary) -> None:
        from mlflow.entities import Metric

        now = _now()
        final = [
            Metric(key, float(summary[key]), now, run.epoch)
            for key in SUMMARY_METRICS
            if isinstance(summary.get(key), (int, float))
        ]
        self._log_metrics(final)
        run_dir = Path(run.run_dir)
        if self.artifacts:
            self.client.log_dict(self.run_id, summary, rundir.SUMMARY)  # not on disk yet
            for name in (rundir.CONFIG, rundir.METRICS):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
        if self.model and (run_dir / rundir.WEIGHTS).is_file():
            self.client.log_artifact(self.run_id, str(run_dir / rundir.WEIGHTS))
        self.client.set_terminated(self.run_id, "FINISHED")

    def _terminate(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            warnings.warn(f"mlflow logger: ending the MLflow run failed: {exc}", stacklevel=3)

    # --- the store ---

    def _store(self, run) -> tuple[str, str | None]:
        """The tracking URI, and where a new experiment keeps its artifacts (None: where
        the store says)."""
        given = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if given:
            return given, None
        folder = Path(run.run_dir).resolve().parent
        uri = "sqlite:///" + (folder / DEFAULT_DB).as_posix()
        return uri, (folder / DEFAULT_ARTIFACTS).as_uri()

    def _connect(self, uri: str) -> Any:
        missing = _missing_database_packages(uri)
        if missing:  # mlflow-skinny: MLflow would blame its model registry
            raise TlplugError(
                f"mlflow logger: the tracking store {uri} needs {' and '.join(missing)}, "
                "which mlflow-skinny lacks: pip install mlflow"
            )
        try:
            return self.client_type(uri)
        except Exception as exc:
            hint = ""
            if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
                hint = (
                    "; set MLFLOW_ALLOW_FILE_STORE=true to use it anyway, or leave "
                    "tracking_uri unset for a sqlite store next to the run"
                )
            raise TlplugError(
                f"mlflow logger: cannot use the tracking store {uri}: {_one_line(exc)}{hint}"
            ) from None

    def _experiment(self, uri: str, artifact_location: str | None) -> str:
        client, name = self.client, self.experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise TlplugError(
                    f"mlflow logger: experiment '{name}' in {uri} is deleted; restore it or "
                    "choose another with --logger-opt mlflow.experiment=NAME"
                )
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:
            found = client.get_experiment_by_name(name)  # made meanwhile by another run
            if found is None:
                raise
            return found.experiment_id

    def _log_metrics(self, metrics: list[Any]) -> None:
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            batch = metrics[start : start + METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)


class MlflowStepLog(MlflowLog):
    """An MLflow log that also records every training step's loss (sent once per epoch)."""

    def step_end(self, run, step) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(STEP_LOSS, step.loss, _now(), step.global_step))


def _missing_database_packages(uri: str) -> list[str]:
    """What a database store (``sqlite:``, ``postgresql:``...) needs and cannot import."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        return []
    missing = []
    for name in ("sqlalchemy", "alembic"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _now() -> int:
    return int(time.time() * 1000)


def _name(name: str) -> str:
    """``name`` with what MLflow refuses in a key turned into ``_``."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _param_limit() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return 500
    return MAX_PARAM_VAL_LENGTH


def _one_line(exc: BaseException) -> str:
    """The first sentence of an error's message, on one line."""
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    end = re.search(r"[.!?](?=\s+[A-Z])", text)
    return (text[: end.end()] if end else text).rstrip(".") or type(exc).__name__
