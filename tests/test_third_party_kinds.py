"""Every registration kind is open to plugins: a plugin object here brings its own backbone
provider, LR schedule and augmentation, trains with them, and the run loads back."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from tlplug import Backbone, DataConfig, Engine, TlplugError, hookimpl, hookspecs
from tlplug.backbone import groups_by_prefix


class TinyProvider:
    """Small CNNs made on the spot (``tiny:cnn8``, ``tiny:cnn16``)."""

    def list_models(self, pattern=None):
        """The widths on offer."""
        return ["cnn16", "cnn8"]

    def describe(self, model):
        """One line per model."""
        return f"a two-stage CNN of width {model[3:]}"

    def create(self, model, pretrained, img_size, *, depth: int = 2):
        """Build the CNN; ``depth`` conv stages after the stem."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        width = int(model[3:])
        stages = [
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(depth)
        ]
        net = nn.Sequential()
        net.add_module("stem", nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU()))
        for i, stage in enumerate(stages):
            net.add_module(f"stage{i}", stage)
        net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        spec = [("stem", ["stem"])] + [(f"stage{i}", [f"stage{i}"]) for i in range(depth)]
        return Backbone(net, width, groups_by_prefix(net, spec), DataConfig(input_size=32))


class ThirdParty:
    name = "third-party"

    @hookimpl
    def tlplug_register_backbones(self, register):
        register("tiny", TinyProvider())

    @hookimpl
    def tlplug_register_lr_schedules(self, register):
        register("halve-each-epoch", halve_each_epoch)

    @hookimpl
    def tlplug_register_augmentations(self, register):
        register("invert", invert)


def halve_each_epoch(optimizer, total_steps, steps_per_epoch):
    """Halve the LR after every epoch."""
    return lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // steps_per_epoch))


def invert(img_size, *, p: float = 0.5):
    """Invert colours with probability ``p``."""
    from torchvision.transforms import v2

    return v2.RandomInvert(p)


def test_plugin_brings_every_kind(image_folder, tmp_path):
    plugin = ThirdParty()
    engine = Engine.from_plugins(
        plugin,
        entrypoints=False,
        backbone="tiny:cnn8",
        backbone_opts={"depth": "3"},
        pretrained=False,
        lr_schedule="halve-each-epoch",
        augment=["invert"],
        augment_opts={"invert": {"p": "1"}},
        schedule="gradual",
        epochs=3,
        batch_size=8,
        workers=0,
        lr=0.1,
    )
    result = engine.fit(image_folder, out=tmp_path, quiet=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert [g["name"] for g in config["resolved"]["groups"]] == [
        "stem",
        "stage0",
        "stage1",
        "stage2",
        "head",
    ]
    assert config["resolved"]["img_size"] == 32
    lrs = [h["lr"]["head"] for h in result.history]
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])

    classifier = Engine.load(tmp_path, plugin, entrypoints=False)
    assert classifier.model.backbone.stage2[0].out_channels == 8
    with torch.no_grad():
        assert classifier(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_provider_failure_is_a_clear_error():
    from tlplug.build import build_backbone

    engine = Engine.from_plugins(
        ThirdParty(), entrypoints=False, backbone="tiny:cnn8", backbone_opts={"depth": 0}
    )
    with pytest.raises(TlplugError, match="^could not build tiny:cnn8: depth must be at least 1$"):
        build_backbone(engine.parts.provider, engine.recipe)


def test_every_hook_is_documented_and_exercised():
    """Each hook spec says when it is called; each is implemented by a plugin in the tests."""
    import inspect
    from pathlib import Path

    tests = "".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
    names = [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("tlplug_")
    ]
    assert len(names) == 9
    for name in names:
        doc = inspect.getdoc(getattr(hookspecs, name))
        flat = " ".join(doc.split()) if doc else ""
        assert "Called" in flat and "Every implementation is called" in flat, name
        assert f"def {name}(" in tests, f"no test plugin implements {name}"
