"""The guide's examples of extending tlplug beyond strategies run as written: an export
format, a logger with a file of its own, a kind of strategy of a plugin's own, a command."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from helpers import TINY
from test_docs import fit, load, plugin_of
from test_resume import CrashAt
from tlplug import Engine, TlplugError
from tlplug.cli.group import TlplugGroup, cli
from tlplug.plugins.host import PluginHost
from tlplug.ship.export import export_run, sample_images
from tlplug.ship.predict import load_classifier


def cli_with(*plugins) -> TlplugGroup:
    """The tlplug command line with ``plugins`` loaded (installed ones left out)."""
    group = TlplugGroup(name="tlplug", commands=dict(cli.commands))
    group.load_plugins(PluginHost(plugins, entrypoints=False))
    return group


def test_exporter_example(image_folder, tmp_path):
    module = load("exporter")
    fit(module, image_folder, tmp_path / "run")
    host = PluginHost([module], entrypoints=False)
    exported = export_run(tmp_path / "run", "pt2", plugins=host)
    assert exported.path == tmp_path / "run" / "model.pt2" and exported.max_diff < 1e-4
    sidecar = json.loads(exported.sidecar.read_text())
    assert sidecar["classes"] == ["checker", "dots", "stripes"]
    assert sidecar["input"]["shape"] == [None, 3, 32, 32] and len(sidecar["input"]["mean"]) == 3
    classifier = load_classifier(tmp_path / "run", host)
    images = sample_images(classifier, 3)
    program = torch.export.load(exported.path).module()
    assert torch.allclose(program(images), classifier(images), atol=1e-5)
    with pytest.raises(TlplugError, match="exists; pass --overwrite"):
        export_run(tmp_path / "run", "pt2", plugins=host)
    result = CliRunner().invoke(
        cli_with(module), ["export", str(tmp_path / "run"), "--format", "pt2", "--overwrite"]
    )
    assert result.exit_code == 0 and "max |difference| of logits" in result.output


def test_logger_example_keeps_its_file_true_to_the_run(image_folder, tmp_path):
    logger = plugin_of(load("logger"))
    recipe = {**TINY, "epochs": 2, "augment": [], "logger": ["steps", "csv"]}
    with pytest.raises(RuntimeError, match="simulated crash"):
        Engine.from_plugins(logger, CrashAt(2), entrypoints=False, **recipe).fit(
            image_folder, out=tmp_path, quiet=True
        )
    rows = list(csv.reader((tmp_path / "steps.csv").open()))
    per_epoch = sum(1 for r in rows if r[0] == "1")
    assert rows[0] == ["epoch", "step", "loss"] and per_epoch == 36 // 8
    assert rows[-1][0] == "ended: error" and sum(1 for r in rows if r[0] == "2") == per_epoch
    Engine.resume(tmp_path, logger, entrypoints=False, quiet=True)
    rows = list(csv.reader((tmp_path / "steps.csv").open()))[1:]
    assert [int(r[0]) for r in rows] == [1] * per_epoch + [2] * per_epoch
    assert [int(r[1]) for r in rows] == list(range(1, 2 * per_epoch + 1))
    Engine.from_plugins(logger, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path, overwrite=True, quiet=True
    )  # a fresh run starts the file anew
    assert len(list(csv.reader((tmp_path / "steps.csv").open()))) == 1 + 2 * per_epoch


def test_kind_example_is_a_kind_like_the_built_in_ones(image_folder, tmp_path):
    module = load("kind")
    host = PluginHost([module], entrypoints=False)
    assert host.registry("notifiers").names() == ["file"]
    _, config = fit(
        module, image_folder, tmp_path, notify=["file"], notify_opts={"file": {"prefix": "pets"}}
    )
    best = json.loads((tmp_path / "summary.json").read_text())["best_val_acc"]
    assert (tmp_path / "notified.txt").read_text() == f"pets {best:.4f}\n"
    assert config["recipe"]["notify"] == ["file"]
    assert config["recipe"]["notify_opts"] == {"file": {"prefix": "pets"}}
    assert config["resolved"]["notify"] == [
        {"name": "file", "plugin": "docs_kind", "options": {"prefix": "pets"}}
    ]
    with pytest.raises(TlplugError, match="unknown notifier 'fiel'; did you mean 'file'"):
        Engine.from_plugins(module, entrypoints=False, notify=["fiel"])
    group = cli_with(module)
    assert "--notify-opt" in CliRunner().invoke(group, ["run", "--help"]).output
    listed = CliRunner().invoke(group, ["list", "notifiers"]).output
    assert listed.startswith("file") and "prefix=done (str)" in listed
    Engine.load(tmp_path, entrypoints=False)  # the network needs no notifier


def test_command_example(image_folder, tmp_path):
    module = load("command")
    fit(plugin_of(load("kind")), image_folder, tmp_path / "runs" / "first")
    group = cli_with(module)
    result = CliRunner().invoke(group, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == 0 and result.output.startswith("first  ")
    assert "runs " in CliRunner().invoke(group, ["--help"]).output
