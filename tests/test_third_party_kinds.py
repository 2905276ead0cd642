"""Every registration kind is open to plugins: a plugin object here brings its own backbone
provider, LR schedule and augmentation, trains with them, and the run loads back."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
from PIL import Image
from torch import nn
from torch.optim import lr_scheduler

from tlplug import Adapter, Backbone, DataConfig, Engine, Splits, TlplugError, hookimpl
from tlplug.model.backbone import groups_by_prefix


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


class ScaledConv(nn.Module):
    """A frozen convolution followed by a learnable per-output-channel scale."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.base = conv
        self.scale = nn.Parameter(torch.ones(conv.out_channels, 1, 1))

    def forward(self, x):
        return self.base(x) * self.scale


def channel_scales(model, *, start: float = 1.0):
    """Scale every convolution's output channels; only the scales (and the head) train."""
    for parent in list(model.backbone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                wrapped = ScaledConv(child)
                wrapped.scale.data.fill_(start)
                setattr(parent, name, wrapped)
    pinned = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    pinned -= {n for n in pinned if n.endswith(".scale")}

    def export(model):
        state = {}
        for key, value in model.state_dict().items():
            if key.endswith(".scale"):
                continue
            path, _, leaf = key.rpartition(".")
            if path.endswith(".base"):
                scale = model.get_parameter(path[: -len(".base")] + ".scale").detach()
                value = value * scale.view(-1, *[1] * (value.dim() - 1))
                key = path[: -len(".base")] + "." + leaf
            state[key] = value
        return state

    return Adapter(pinned=frozenset(pinned), export=export)


class MoreKinds:
    """A data source, an adapter and a regularizer from one plugin."""

    name = "more-kinds"

    def __init__(self):
        self.batches = []

    @hookimpl
    def tlplug_register_data_sources(self, register):
        register("solid", solid_colours)

    @hookimpl
    def tlplug_register_adapters(self, register):
        register("channel-scales", channel_scales)

    @hookimpl
    def tlplug_register_regularizers(self, register):
        register("head-l2", self.head_l2)

    def head_l2(self, model, *, alpha: float = 0.1):
        """alpha times the squared norm of the head's weights."""

        def penalty(batch):
            self.batches.append(batch)
            return alpha * sum(p.pow(2).sum() for p in model.head.parameters())

        return penalty


@attrs.frozen
class SolidImages:
    """Images of one flat colour per class."""

    labels: tuple[int, ...]

    def __len__(self):
        return len(self.labels)

    def load(self, index):
        shade = (60, 200)[self.labels[index]] + index % 7
        return Image.new("RGB", (40, 40), (shade, 255 - shade, shade // 2))


def solid_colours(location, seed, val_split, *, count: int = 16):
    """Dark and light flat images (``count`` per split)."""
    labels = tuple(i % 2 for i in range(count))
    return Splits(("dark", "light"), SolidImages(labels), SolidImages(labels), {"kind": "solid"})


def test_data_source_adapter_and_regularizer_from_a_plugin(tmp_path):
    plugin = MoreKinds()
    engine = Engine.from_plugins(
        plugin,
        ThirdParty(),
        entrypoints=False,
        backbone="tiny:cnn8",
        pretrained=False,
        epochs=2,
        batch_size=8,
        workers=0,
        schedule="gradual",
        adapter="channel-scales",
        regularizer=["head-l2"],
        regularizer_opts={"head-l2": {"alpha": "0.01"}},
        data_opts={"count": "24"},
        augment=(),
        cache_features="off",
    )
    result = engine.fit("solid:", out=tmp_path / "run", quiet=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    data = config["resolved"]["data"]
    assert (data["source"], data["num_train"]) == ("solid", 24)
    assert config["resolved"]["adapter"]["name"] == "channel-scales"
    assert config["resolved"]["regularizers"][0]["options"] == {"alpha": 0.01}
    groups = {g["name"]: g["params"] for g in config["resolved"]["groups"]}
    assert groups["stage1"] == 8 * 8 * 9 + 8 + 8 + 8 + 8  # conv, bias, BN, and the new scale
    assert len(plugin.batches) == 6 and plugin.batches[0].features.shape == (8, 8)
    assert plugin.batches[0].targets.shape == (8, 2) and plugin.batches[0].images is not None
    assert [h["trainable_params"] for h in result.history] == [18, 18 + 8]  # head; + a scale
    classifier = Engine.load(tmp_path / "run", ThirdParty(), entrypoints=False)
    assert isinstance(classifier.model.backbone.stage1[0], nn.Conv2d)  # exported, merged


def test_provider_failure_is_a_clear_error():
    from tlplug.plugins.resolve import build_backbone

    engine = Engine.from_plugins(
        ThirdParty(), entrypoints=False, backbone="tiny:cnn8", backbone_opts={"depth": 0}
    )
    with pytest.raises(TlplugError, match="^could not build tiny:cnn8: depth must be at least 1$"):
        build_backbone(engine.parts.provider, engine.recipe)
