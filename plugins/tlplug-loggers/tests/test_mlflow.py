"""The mlflow logger through real runs, read back from real tracking stores with
``MlflowClient``."""

from __future__ import annotations

import itertools
import json
import sys

import pytest
import tlplug_loggers
from mlflow.tracking import MlflowClient
from tlplug_loggers.common import flat_recipe

from helpers import STEPS_PER_EPOCH, FailAt, read_config
from tlplug import Engine, OptionError, TlplugError
from tlplug.testing import make_engine


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    """A tracking URI of a local file store, fast to make; MLflow 3 refuses file stores
    unless ``MLFLOW_ALLOW_FILE_STORE`` is set."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()


def mlflow_of(run_dir) -> tuple[MlflowClient, str]:
    """A client of the store a run logged to, and its MLflow run id, from config.json."""
    where = read_config(run_dir)["tlplug-loggers"]["mlflow"]
    return MlflowClient(where["tracking_uri"]), where["run_id"]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def per_epoch(records: list[dict], key: str) -> list[tuple[int, float]]:
    """What the metric history of ``key`` must be: each epoch's value, once."""
    return [(r["epoch"], pytest.approx(r[key])) for r in records]


def test_a_run_in_the_default_store(image_folder, tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    engine = make_engine(
        tlplug_loggers, logger=("mlflow",), logger_opts={"mlflow": {"steps": True}}, **tiny
    )
    result = engine.fit(image_folder, out=tmp_path / "runs" / "pets", quiet=True)
    run_dir = result.run_dir
    # the default store: sqlite in the folder holding the run directory, artifacts beside it
    client, run_id = mlflow_of(run_dir)
    assert client.tracking_uri == "sqlite:///" + (tmp_path / "runs" / "mlflow.db").as_posix()
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "pets"
    assert found.info.artifact_uri.startswith((tmp_path / "runs" / "mlartifacts").as_uri())
    assert client.get_experiment(found.info.experiment_id).name == "tlplug"

    config = read_config(run_dir)
    recipe = flat_recipe(config["recipe"])
    assert found.data.params == {k: str(v) for k, v in recipe.items()}
    assert found.data.params["backbone"] == "timm:resnet10t"
    assert found.data.params["logger_opts.mlflow.steps"] == "True"
    assert found.data.params["augment"] == "[]"
    tags = found.data.tags
    assert tags["tlplug.version"] == config["tlplug_version"]
    assert tags["tlplug.model.backbone"] == "timm:resnet10t"
    assert tags["tlplug.run_dir"] == str(run_dir.resolve())

    records = result.history
    assert history(client, run_id, "val_acc") == per_epoch(records, "val_acc")
    for key in ("train_loss", "train_acc", "val_loss", "seconds", "lr_head", "lr_stem"):
        assert [step for step, _ in history(client, run_id, key)] == [1, 2], key
    assert [s for s, _ in history(client, run_id, "train_loss_step")] == list(
        range(1, 2 * STEPS_PER_EPOCH + 1)
    )
    assert found.data.metrics["best_val_acc"] == pytest.approx(result.best_val_acc)

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"config.json", "metrics.jsonl", "summary.json", "model.safetensors"}
    local = client.download_artifacts(run_id, "summary.json", str(tmp_path))
    with open(local) as logged:
        assert json.load(logged) == json.loads((run_dir / "summary.json").read_text())


def test_a_failed_run_resumed_continues_its_mlflow_run(image_folder, tiny, tmp_path, file_store):
    options = {
        "mlflow": {
            "tracking_uri": file_store,
            "experiment": "pets",
            "artifacts": False,
            "model": False,
        }
    }
    engine = make_engine(tlplug_loggers, FailAt(2), logger=("mlflow",), logger_opts=options, **tiny)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="planned failure at epoch 2"):
        engine.fit(image_folder, out=run_dir, quiet=True)
    client, run_id = mlflow_of(run_dir)
    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["tlplug.error_reason"] == "error"
    assert failed.data.tags["tlplug.error"] == "planned failure at epoch 2"
    assert [s for s, _ in history(client, run_id, "val_acc")] == [1]

    result = Engine.resume(run_dir, tlplug_loggers, entrypoints=False, quiet=True)
    assert read_config(run_dir)["tlplug-loggers"]["mlflow"]["run_id"] == run_id
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert "tlplug.error" not in resumed.data.tags
    assert "tlplug.error_reason" not in resumed.data.tags
    assert resumed.data.tags["tlplug.resumed_after_epoch"] == "1"
    assert history(client, run_id, "val_acc") == per_epoch(result.history, "val_acc")
    assert client.get_experiment(resumed.info.experiment_id).name == "pets"
    assert [r.info.run_id for r in client.search_runs([resumed.info.experiment_id])] == [run_id]
    assert client.list_artifacts(run_id) == []  # artifacts=false, model=false


def test_errors_a_user_can_fix(image_folder, tiny, tmp_path, monkeypatch):
    runs = itertools.count()

    def fit(**options):
        engine = make_engine(
            tlplug_loggers, logger=("mlflow",), logger_opts={"mlflow": options}, **tiny
        )
        engine.fit(image_folder, out=tmp_path / f"run-{next(runs)}", quiet=True)

    with pytest.raises(OptionError, match="option 'experiment' must not be empty"):
        fit(experiment=" ")

    with monkeypatch.context() as without:  # as with mlflow-skinny alone
        without.setitem(sys.modules, "sqlalchemy", None)
        db = f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
        with pytest.raises(TlplugError) as caught:
            fit(tracking_uri=db)
        message = str(caught.value)  # alembic too, unless an earlier test imported it
        assert message.startswith(f"mlflow logger: the tracking store {db} needs sqlalchemy")
        assert message.endswith(", which mlflow-skinny lacks: pip install mlflow")

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    try:
        MlflowClient(uri)
    except Exception:
        pass
    else:
        pytest.skip("this MLflow still takes a file store without MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(TlplugError) as caught:
        fit(tracking_uri=uri)
    message = str(caught.value)
    assert message.startswith(f"mlflow logger: cannot use the tracking store {uri}: ")
    assert "set MLFLOW_ALLOW_FILE_STORE=true" in message
    assert "\n" not in message
