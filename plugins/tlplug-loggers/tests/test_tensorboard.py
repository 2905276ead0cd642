"""The tensorboard logger through real runs, its event files read back with TensorBoard's
own readers."""

from __future__ import annotations

from pathlib import Path

import pytest
import tlplug_loggers
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams.api_pb2 import Status

from helpers import STEPS_PER_EPOCH, FailingLogger, read_config
from tlplug import Engine
from tlplug.testing import make_engine
from tlplug.testing import run_cli as cli


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files in ``folder`` as ``[(step, value), ...]``, as
    TensorBoard shows them (events an interrupted run wrote past a resume purged)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def hparams_of(folder: Path) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    """The HParams dashboard's records in ``folder``, by tag."""
    events = plugin_event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    if "hparams" not in events.ActivePlugins():
        return {}
    return {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in events.PluginTagToContent("hparams").items()
    }


def steps(values: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in values]


def test_a_run_writes_steps_epochs_and_the_recipe(image_folder, tiny, tmp_path):
    engine = make_engine(tlplug_loggers, logger=("tensorboard",), **tiny)
    result = engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    folder = result.run_dir / "tensorboard"
    recorded = read_config(result.run_dir)["tlplug-loggers"]["tensorboard"]
    assert recorded == {"dir": str(folder.resolve())}
    found = scalars(folder)
    total = 2 * STEPS_PER_EPOCH
    assert steps(found["step/train_loss"]) == list(range(1, total + 1))
    ends = [STEPS_PER_EPOCH, total]  # an epoch's numbers sit at the step that ended it
    for tag in (
        "epoch/train_loss",
        "epoch/train_acc",
        "epoch/val_loss",
        "epoch/val_acc",
        "epoch/seconds",
        "lr/head",
        "lr/stem",
    ):
        assert steps(found[tag]) == ends, tag
    assert [v for _, v in found["epoch/epoch"]] == [1.0, 2.0]
    records = result.history
    assert [v for _, v in found["epoch/val_acc"]] == pytest.approx([r["val_acc"] for r in records])
    assert [v for _, v in found["lr/head"]] == pytest.approx([r["lr"]["head"] for r in records])
    assert found["summary/best_val_acc"][0][1] == pytest.approx(result.best_val_acc)

    hparams = hparams_of(folder)
    start = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert start["backbone"].string_value == "timm:resnet10t"
    assert start["batch_size"].number_value == 8
    assert start["augment"].string_value == "[]"
    assert start["logger_opts.tensorboard.dir"].string_value == "tensorboard"
    end = hparams["_hparams_/session_end_info"].session_end_info
    assert Status.Name(end.status) == "STATUS_SUCCESS"

    # --overwrite: a fresh run in the same directory starts the event files anew
    again = engine.fit(image_folder, epochs=1, out=result.run_dir, overwrite=True, quiet=True)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    found = scalars(folder)
    assert steps(found["epoch/val_acc"]) == [STEPS_PER_EPOCH]
    assert steps(found["step/train_loss"]) == list(range(1, STEPS_PER_EPOCH + 1))
    assert again.history[0]["epoch"] == 1


def test_a_resumed_run_continues_its_curves_without_doubling_an_epoch(image_folder, tiny, tmp_path):
    plugins = (tlplug_loggers, FailingLogger(2))
    engine = make_engine(*plugins, logger=("tensorboard", "fail"), **tiny)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="planned failure at epoch 2"):
        engine.fit(image_folder, out=run_dir, quiet=True)
    folder = run_dir / "tensorboard"
    written = scalars(folder)  # epoch 2 was logged, then failed: resuming trains it again
    assert steps(written["epoch/val_acc"]) == [2, 4]  # epochs 1 and 2
    assert steps(written["step/train_loss"]) == [1, 2, 3, 4]
    assert "_hparams_/session_end_info" not in hparams_of(folder)  # it may end well yet

    resumed = (tlplug_loggers, FailingLogger(None))
    result = Engine.resume(run_dir, *resumed, entrypoints=False, quiet=True)
    assert [r["epoch"] for r in result.history] == [1, 2]
    found = scalars(folder)
    total = 2 * STEPS_PER_EPOCH
    assert steps(found["epoch/val_acc"]) == [2, 4]  # once per epoch, epoch 2 as retrained
    assert [v for _, v in found["epoch/epoch"]] == [1.0, 2.0]
    assert [v for _, v in found["epoch/val_acc"]] == pytest.approx(
        [r["val_acc"] for r in result.history]
    )
    assert steps(found["step/train_loss"]) == list(range(1, total + 1))
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one per sitting
    hparams = hparams_of(folder)  # the recipe from the first sitting, the end from the last
    assert hparams["_hparams_/session_start_info"].session_start_info.hparams["epochs"]
    ended = hparams["_hparams_/session_end_info"].session_end_info
    assert Status.Name(ended.status) == "STATUS_SUCCESS"


def test_command_line_with_options(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys,
        "run",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--augment",
        "none",
        "--no-plots",
        "--out",
        run_dir,
        "--logger",
        "tensorboard",
        "--logger",
        "csv",
        "--logger-opt",
        "tensorboard.dir=tb",
        "--logger-opt",
        "tensorboard.steps=false",
        "--logger-opt",
        "tensorboard.hparams=no",
    )
    assert code == 0, err
    assert (run_dir / "metrics.csv").is_file()
    found = scalars(run_dir / "tb")
    assert "step/train_loss" not in found
    assert steps(found["epoch/val_acc"]) == [STEPS_PER_EPOCH]
    assert hparams_of(run_dir / "tb") == {}
    assert not (run_dir / "tensorboard").exists()
    options = read_config(run_dir)["resolved"]["loggers"][0]["options"]
    assert options == {"dir": "tb", "steps": False, "hparams": False}
