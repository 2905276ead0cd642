"""How a run ends and the hooks that watch it: every step reported, the stage a resumed run
continues in announced, each kind of failure named to the plugins, and a plugin that fails
while registering disabled whole."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from test_docs_extending import cli_with
from test_resume import RUN_RECIPE, assert_same_tensors, epochs_of, final_model
from tlplug import Engine, Stage, TlplugError, hookimpl
from tlplug.plugins.host import PluginHost


class Watcher:
    """Records every lifecycle hook call."""

    name = "watcher"

    def __init__(self, interrupt_at_step: int = 0):
        self.calls: list[tuple] = []
        self.interrupt_at_step = interrupt_at_step

    @hookimpl
    def tlplug_stage_start(self, run, stage):
        self.calls.append(("stage", run.epoch, stage.name, run.source.cache, run.source.used))

    @hookimpl
    def tlplug_step_end(self, run, step):
        self.calls.append(("step", step.epoch, step.index, step.global_step, step.images))
        if step.global_step == self.interrupt_at_step:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C would

    @hookimpl
    def tlplug_run_error(self, run, reason, error):
        self.calls.append(("error", reason, type(error).__name__))


def test_every_step_is_reported_and_numbered(image_folder, tmp_path):
    watcher = Watcher()
    result = Engine.from_plugins(watcher, entrypoints=False, **(RUN_RECIPE | {"epochs": 2})).fit(
        image_folder, out=tmp_path, quiet=True
    )
    steps = [c for c in watcher.calls if c[0] == "step"]
    per_epoch = 36 // 8
    assert [(c[1], c[2], c[3]) for c in steps] == [
        (epoch, index, (epoch - 1) * per_epoch + index)
        for epoch in (1, 2)
        for index in range(1, per_epoch + 1)
    ]
    assert all(c[4] == 8 for c in steps) and len(result.history) == 2


def test_a_resumed_run_announces_the_stage_it_continues_in(image_folder, tmp_path, capsys):
    from test_resume import CrashAt

    recipe = RUN_RECIPE | {"schedule": "full", "epochs": 3, "augment": ()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        Engine.from_plugins(CrashAt(2), entrypoints=False, **recipe).fit(
            image_folder, out=tmp_path, quiet=True
        )
    watcher = Watcher()
    Engine.resume(tmp_path, watcher, entrypoints=False)
    assert [c for c in watcher.calls if c[0] == "stage"] == [("stage", 2, "full", None, False)]
    assert "continuing stage 1/1 'full' from epoch 2" in capsys.readouterr().out
    assert epochs_of(tmp_path) == [1, 2, 3]


def test_an_interrupt_is_reported_to_plugins_after_the_state_is_kept(image_folder, tmp_path):
    watcher = Watcher(interrupt_at_step=6)
    with pytest.raises(TlplugError, match="stopped by SIGINT during epoch 2"):
        Engine.from_plugins(watcher, entrypoints=False, **RUN_RECIPE).fit(
            image_folder, out=tmp_path, quiet=True
        )
    assert watcher.calls[-1] == ("error", "interrupted", "Interrupted")
    assert epochs_of(tmp_path) == [1] and (tmp_path / "resume.safetensors").is_file()


def test_an_error_in_a_plugin_is_reported_to_the_others(image_folder, tmp_path):
    from test_resume import CrashAt

    watcher = Watcher()
    with pytest.raises(RuntimeError, match="simulated crash"):
        Engine.from_plugins(watcher, CrashAt(1), entrypoints=False, **RUN_RECIPE).fit(
            image_folder, out=tmp_path, quiet=True
        )
    assert watcher.calls[-1] == ("error", "error", "RuntimeError")


class NanHead(nn.Linear):
    """A head whose logits are NaN in the training steps listed in ``bad`` (1-based)."""

    def __init__(self, num_features: int, num_classes: int, bad: tuple[int, ...]):
        super().__init__(num_features, num_classes)
        self.bad, self.calls = bad, 0

    def forward(self, features):
        logits = super().forward(features)
        if self.training:
            self.calls += 1
            if self.calls in self.bad:
                return logits * float("nan")
        return logits


class NanHeads:
    name = "nan-heads"

    def __init__(self, bad: tuple[int, ...]):
        self.bad = bad

    @hookimpl
    def tlplug_register_heads(self, register):
        register("nan", lambda f, n: NanHead(f, n, self.bad))


def test_divergence_stops_keeps_the_best_weights_and_names_the_step(image_folder, tmp_path):
    # 4 steps per epoch: step 6 is in epoch 2, the first of a stage, which is rolled back
    # and trained again from step 7: the second NaN, at its step 2, stops the run.
    recipe = RUN_RECIPE | {"head": "nan", "epochs": 3}
    engine = Engine.from_plugins(NanHeads((6, 8)), entrypoints=False, **recipe)
    with pytest.raises(TlplugError) as caught:
        engine.fit(image_folder, out=tmp_path, quiet=True)
    message = str(caught.value)
    assert "the loss became nan at epoch 2, step 2; try a lower --lr" in message
    assert "--skip-nonfinite" in message and "(epoch 1) are kept" in message
    best = load_file(tmp_path / "model.safetensors")
    assert_same_tensors(best, {k[6:]: v for k, v in final_model(tmp_path).items()})
    assert epochs_of(tmp_path) == [1]


def test_skip_nonfinite_steps_over_bad_batches(image_folder, tmp_path):
    recipe = RUN_RECIPE | {"head": "nan", "epochs": 2, "skip_nonfinite": 2}
    result = Engine.from_plugins(NanHeads((2, 7)), entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path, quiet=True
    )
    assert [r["skipped_nonfinite"] for r in result.history] == [1, 2]
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_nonfinite"] == 2
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "model.safetensors").values())


class OomHead(nn.Linear):
    """A head that runs out of memory for training batches larger than 4 (as a GPU would)."""

    def forward(self, features):
        if self.training and len(features) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(features)


class OomHeads:
    name = "oom-heads"

    @hookimpl
    def tlplug_register_heads(self, register):
        register("oom", OomHead)


def test_out_of_memory_names_the_batch_size_and_auto_batch_size_fits(image_folder, tmp_path):
    recipe = RUN_RECIPE | {"head": "oom", "epochs": 1, "batch_size": 16}
    with pytest.raises(TlplugError, match="out of memory .* at batch size 16 .*--batch-size 8"):
        Engine.from_plugins(OomHeads(), entrypoints=False, **recipe).fit(
            image_folder, out=tmp_path / "a", quiet=True
        )
    assert not (tmp_path / "a" / "model.safetensors").exists()
    recipe["auto_batch_size"] = True
    Engine.from_plugins(OomHeads(), entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "b", quiet=True
    )
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["resolved"]["batch_size"] == 4


def test_divergence_and_out_of_memory_are_named_to_plugins(image_folder, tmp_path):
    for plugin, head, reason in (
        (NanHeads((2, 4)), "nan", "diverged"),  # the retry (from step 3) diverges too
        (OomHeads(), "oom", "out-of-memory"),
    ):
        watcher = Watcher()
        recipe = RUN_RECIPE | {"head": head, "epochs": 1, "batch_size": 16}
        with pytest.raises(TlplugError):
            Engine.from_plugins(plugin, watcher, entrypoints=False, **recipe).fit(
                image_folder, out=tmp_path / reason, quiet=True
            )
        assert watcher.calls[-1][:2] == ("error", reason)


class HalfRegistered:
    """Registers a head, then fails registering a schedule, and watches epochs."""

    name = "half"

    def __init__(self):
        self.epochs = 0

    @hookimpl
    def tlplug_register_heads(self, register):
        register("half-head", lambda f, n: nn.Linear(f, n))

    @hookimpl
    def tlplug_register_schedules(self, register):
        register("half-schedule", lambda groups, epochs: [Stage(0, groups)])
        raise RuntimeError("broken halfway")

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self.epochs += 1


def test_a_plugin_failing_while_registering_is_disabled_whole(image_folder, tmp_path):
    plugin = HalfRegistered()
    host = PluginHost([plugin], entrypoints=False)
    assert "half-head" not in host.registry("heads").names()
    assert "half-schedule" not in host.registry("schedules").names()
    info = host.infos["half"]
    assert info.status == "failed" and "broken halfway" in info.error
    Engine(host, host.recipe_type.from_kwargs(**(RUN_RECIPE | {"epochs": 1}))).fit(
        image_folder, out=tmp_path, quiet=True
    )
    assert plugin.epochs == 0  # its lifecycle hook is gone too


def test_plugins_json_lists_the_lifecycle_hooks(tmp_path):
    result = CliRunner().invoke(cli_with(Watcher()), ["plugins", "--json"])
    infos = {i["name"]: i for i in json.loads(result.output)}
    assert infos["watcher"]["hooks"] == [
        "tlplug_run_error",
        "tlplug_stage_start",
        "tlplug_step_end",
    ]
    assert infos["metrics"]["hooks"] == ["tlplug_epoch_end"]
    assert infos["heads"]["hooks"] == [] and infos["heads"]["registers"] == {
        "heads": ["linear", "mlp"]
    }
    text = CliRunner().invoke(cli_with(Watcher()), ["plugins"]).output
    assert "    hooks: tlplug_run_error, tlplug_stage_start, tlplug_step_end" in text
