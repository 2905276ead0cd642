"""Plugin discovery: built-ins via entry points, a real pip-installed third-party package,
plugin objects passed to the engine, and a broken plugin that harms nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlplug import Engine, Stage, TlplugError, hookimpl
from tlplug.builtin import BUILTIN_PLUGINS
from tlplug.plugins import hookspecs
from tlplug.plugins.host import PluginHost

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(__file__).parent / "fixtures" / "tlplug-demo-plugin"


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory) -> Path:
    """The demo plugin pip-installed (for real) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / DEMO.name
    shutil.copytree(DEMO, source)  # pip builds inside the source tree; keep the repo clean
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(target), str(source)],
        check=True,
    )
    return target


def tlplug(*args: str, site: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the installed ``tlplug`` command with ``site`` on the path."""
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run(
        [sys.executable, "-m", "tlplug", *args], capture_output=True, text=True, env=environ
    )


def test_builtins_are_declared_as_entry_points():
    """The installed distribution declares exactly the built-in plugin modules."""
    from importlib.metadata import entry_points

    declared = {
        ep.name: ep.value for ep in entry_points(group="tlplug") if ep.dist.name == "tlplug"
    }
    assert declared == BUILTIN_PLUGINS


def test_builtins_are_found_through_entry_points():
    infos = {i.name: i for i in PluginHost().all_infos()}
    assert set(BUILTIN_PLUGINS) <= set(infos)
    assert infos["heads"].distribution == "tlplug"
    assert infos["heads"].registers == {"heads": ["linear", "mlp"]}


def test_installed_plugin_is_listed_with_its_distribution(demo_site):
    result = tlplug("plugins", "--json", site=demo_site)
    assert result.returncode == 0, result.stderr
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    demo = infos["demo"]
    assert (demo["distribution"], demo["version"], demo["status"]) == (
        "tlplug-demo-plugin",
        "1.2.3",
        "loaded",
    )
    assert demo["registers"] == {"heads": ["zero-linear"], "schedules": ["head-then-top2"]}
    broken = infos["broken"]
    assert broken["status"] == "failed"
    assert "needs a package that is not installed" in broken["error"]
    assert infos["timm"]["status"] == "loaded"

    text = tlplug("plugins", site=demo_site).stdout
    assert "demo (tlplug-demo-plugin 1.2.3) loaded" in text
    assert "broken (tlplug-demo-plugin 1.2.3) failed" in text


def test_incompatible_and_misspelled_plugins_are_reported_in_plain_words(demo_site):
    infos = {i["name"]: i for i in json.loads(tlplug("plugins", "--json", site=demo_site).stdout)}
    future = infos["future"]
    assert future["status"] == "incompatible"
    assert future["error"].startswith("needs tlplug hook API 2.0, and this tlplug")
    assert future["error"].endswith(f"has {hookspecs.HOOK_API}; upgrade tlplug")
    assert infos["misspelled"]["status"] == "failed"
    assert infos["misspelled"]["error"] == (
        "TlplugError: its tlplug_epoch_end asks for arguments the hook does not pass; "
        "the hook passes run, record"
    )
    assert infos["demo"]["status"] == "loaded"


@pytest.mark.slow
def test_environment_chooses_which_installed_plugins_load(demo_site):
    def statuses(**env):
        result = tlplug("plugins", "--json", site=demo_site, **env)
        return {i["name"]: i["status"] for i in json.loads(result.stdout)}

    assert statuses(TLPLUG_DISABLE_PLUGINS="demo, broken")["demo"] == "disabled"
    only = statuses(TLPLUG_LOAD_PLUGINS="tlplug-demo-plugin")  # a distribution name works too
    assert only["demo"] == "loaded" and only["broken"] == "failed"
    only = statuses(TLPLUG_LOAD_PLUGINS="demo")
    assert only["demo"] == "loaded" and only["broken"] == "disabled"
    assert only["timm"] == only["heads"] == "loaded"  # built-ins always load
    result = tlplug(
        "run",
        "--head",
        "zero-linear",
        "--epochs",
        "1",
        site=demo_site,
        TLPLUG_DISABLE_PLUGINS="demo",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: unknown head 'zero-linear'")
    assert "demo (disabled)" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_installed_plugin_strategies_are_usable_by_name(demo_site, image_folder, tmp_path):
    listed = tlplug("list", "heads", site=demo_site).stdout
    assert "zero-linear" in listed and "A linear head that starts at zero." in listed
    assert "--notify-opt NAME.KEY=VALUE" in tlplug("run", "--help", site=demo_site).stdout
    log = tmp_path / "hook.log"
    result = tlplug(
        "run",
        "--data",
        str(image_folder),
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--head",
        "zero-linear",
        "--schedule",
        "head-then-top2",
        "--notify",  # a kind the installed package adds (tlplug_demo_plugin/notifiers.py)
        "file",
        "--notify-opt",
        "file.prefix=demo",
        "--out",
        str(tmp_path / "run"),
        site=demo_site,
        TLPLUG_DEMO_LOG=str(log),
    )
    assert result.returncode == 0, result.stderr
    best = json.loads((tmp_path / "run" / "summary.json").read_text())["best_val_acc"]
    assert (tmp_path / "run" / "notified.txt").read_text() == f"demo {best:.4f}\n"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["head"] == {
        "name": "zero-linear",
        "plugin": "demo",
        "options": {"bias": True},
    }
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["trainable_groups"] for m in metrics] == [["head"], ["layer4", "head"]]
    assert [m["demo_plugin_saw_epoch"] for m in metrics] == [1, 2]
    assert [json.loads(line) for line in log.open()] == [
        {"epoch": 1, "stage": "head"},
        {"epoch": 2, "stage": "layer4..head"},
    ]


class Recorder:
    """A plugin object: registers a schedule and watches every lifecycle hook."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    @hookimpl
    def tlplug_register_schedules(self, register):
        register("top-only", self.top_only)

    def top_only(self, groups, epochs, *, top: int = 2):
        """Train the top ``top`` groups throughout."""
        return [Stage(0, groups[-top:])]

    @hookimpl
    def tlplug_run_start(self, run):
        self.calls.append(("run_start", run.recipe.schedule))
        run.config["recorder"] = "was here"

    @hookimpl
    def tlplug_stage_start(self, run, stage):
        self.calls.append(("stage_start", stage.trainable))

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self.calls.append(("epoch_end", record["epoch"]))

    @hookimpl
    def tlplug_run_end(self, run, summary):
        self.calls.append(("run_end", summary["epochs"]))
        summary["recorder"] = True


def test_plugin_object_takes_part_like_an_installed_one(image_folder, tmp_path, tiny):
    recorder = Recorder()
    engine = Engine.from_plugins(
        recorder, entrypoints=False, **tiny, schedule="top-only", schedule_opts={"top": "3"}
    )
    result = engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    assert recorder.calls == [
        ("run_start", "top-only"),
        ("stage_start", ("layer3", "layer4", "head")),
        ("epoch_end", 1),
        ("epoch_end", 2),
        ("run_end", 2),
    ]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["recorder"] is True
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["recorder"] == "was here"
    assert engine.recipe.schedule_opts == {"top": 3}


def test_plugin_failing_while_registering_is_reported_and_skipped():
    class Faulty:
        name = "faulty"

        @hookimpl
        def tlplug_register_heads(self, register):
            raise RuntimeError("cannot register today")

    host = PluginHost([Faulty()], entrypoints=False)
    assert host.registry("heads").names() == ["linear", "mlp"]
    info = host.infos["faulty"]
    assert info.status == "failed" and "cannot register today" in info.error


def test_docs_plugin_example_runs(image_folder, tmp_path, tiny):
    """The schedule plugin of docs/getting-started.md works as written."""
    import re
    import types

    text = (ROOT / "docs" / "getting-started.md").read_text()
    code = re.search(r"```python\n(# my_schedules.py\n.*?)```", text, re.S).group(1)
    module = types.ModuleType("my_schedules")
    exec(compile(code, "my_schedules.py", "exec"), module.__dict__)
    tiny.update(schedule="top-half", schedule_opts={"warm_epochs": "1"})
    result = Engine.from_plugins(module, entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path, quiet=True
    )
    assert [h["trainable_groups"] for h in result.history] == [
        ["head"],
        ["layer3", "layer4", "head"],
    ]
    for warm, expected in ((0, [["layer3", "layer4", "head"]] * 2), (5, [["head"]] * 2)):
        tiny.update(schedule_opts={"warm_epochs": warm})
        result = Engine.from_plugins(module, entrypoints=False, **tiny).fit(
            image_folder, out=tmp_path / f"warm{warm}", quiet=True
        )
        assert [h["trainable_groups"] for h in result.history] == expected
    tiny.update(schedule_opts={"warm_epochs": -1})
    with pytest.raises(TlplugError, match="warm_epochs must be >= 0, got -1"):
        Engine.from_plugins(module, entrypoints=False, **tiny).fit(image_folder, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_plugin_with_a_misspelt_hook_is_reported():
    class Misspelt:
        name = "misspelt"

        @hookimpl
        def tlplug_register_head(self, register):
            register("never", None)

    host = PluginHost([Misspelt()], entrypoints=False)
    info = host.infos["misspelt"]
    assert info.status == "failed"
    assert (
        "unknown hook(s) tlplug_register_head (did you mean tlplug_register_heads?)" in info.error
    )
    assert host.registry("heads").names() == ["linear", "mlp"]


def test_predicting_needs_only_the_plugins_that_make_the_network(image_folder, tmp_path, tiny):
    recorder = Recorder()
    Engine.from_plugins(recorder, entrypoints=False, **tiny, schedule="top-only").fit(
        image_folder, epochs=1, out=tmp_path / "a", quiet=True
    )
    assert Engine.load(tmp_path / "a", entrypoints=False).classes  # no recorder needed

    class HeadPlugin:
        name = "head-plugin"

        @hookimpl
        def tlplug_register_heads(self, register):
            register(
                "tiny-head",
                lambda num_features, num_classes: torch.nn.Linear(num_features, num_classes),
            )

    Engine.from_plugins(HeadPlugin(), entrypoints=False, **tiny, head="tiny-head").fit(
        image_folder, epochs=1, out=tmp_path / "b", quiet=True
    )
    with pytest.raises(
        TlplugError, match="unknown head 'tiny-head'.*trained with plugin.*head-plugin"
    ):
        Engine.load(tmp_path / "b", entrypoints=False)
    assert Engine.load(tmp_path / "b", HeadPlugin(), entrypoints=False).classes
