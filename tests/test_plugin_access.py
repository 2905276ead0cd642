"""What a plugin reads of a run has a public, documented way in: the resolved strategies as a
mapping (by kind key or recipe field), a choice's name, the penalties, a place for the
plugin's own state, whether a backbone's weights were trained; and what the run records of
a data source's options is typed, with defaults."""

from __future__ import annotations

import json

import pytest
import timm

from helpers import TINY, tlplug
from tlplug import Backbone, DataConfig, Engine, TlplugError, hookimpl
from tlplug.model.backbone import groups_from_children


class Reader:
    """Reads a run as a third-party plugin would, through the documented accessors."""

    def __init__(self):
        self.seen: dict = {}

    @hookimpl
    def tlplug_run_start(self, run):
        parts = run.parts
        self.seen = {
            "kinds": sorted(parts),
            "schedule": parts["schedules"].name,
            "by_field": parts["schedule"].name,
            "attribute": parts.lr_schedule.name,
            "augment": [choice.name for choice in parts["augment"]],
            "plugin": parts["heads"].plugin,
            "penalties": run.penalties,
            "as_json": json.loads(json.dumps(parts.describe()))["heads"]["name"],
        }
        run.plugin_data["reader"] = {"epochs": 0}

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        run.plugin_data["reader"]["epochs"] += 1

    @hookimpl
    def tlplug_run_end(self, run, summary):
        self.seen["epochs"] = run.plugin_data["reader"]["epochs"]


def test_a_plugin_reads_the_run_through_its_accessors(image_folder, tmp_path):
    reader = Reader()
    recipe = {**TINY, "schedule": "gradual", "augment": ("flip", "crop")}
    Engine.from_plugins(reader, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    assert reader.seen == {
        "kinds": [
            "adapters",
            "augmentations",
            "backbones",
            "distillation-losses",
            "heads",
            "loggers",
            "lr-schedules",
            "regularizers",
            "schedules",
        ],
        "schedule": "gradual",
        "by_field": "gradual",
        "attribute": "cosine",
        "augment": ["crop", "flip"],
        "plugin": "heads",
        "penalties": (),
        "as_json": "linear",
        "epochs": 2,
    }


class Zoo:
    """A backbone provider whose weights line is free text: ``pretrained`` decides."""

    def __init__(self, trained: bool | None):
        self.trained = trained

    def list_models(self, pattern=None):
        return ["tiny"]

    def describe(self, model):
        return "resnet10t under another name"

    def create(self, model, pretrained, img_size, *, width: int = 1):
        net = timm.create_model("resnet10t", num_classes=0)
        return Backbone(
            module=net,
            num_features=net.num_features,
            groups=groups_from_children(net),
            data_config=DataConfig(input_size=32),
            weights="zoo v1",
            pretrained=self.trained,
        )


class ZooPlugin:
    def __init__(self, trained):
        self.provider = Zoo(trained)

    @hookimpl
    def tlplug_register_backbones(self, register):
        register("zoo", self.provider)


@pytest.mark.parametrize("trained", [False, None])
def test_the_pretrained_field_decides_not_the_weights_line(trained, image_folder, tmp_path, capsys):
    recipe = {
        **TINY,
        "backbone": "zoo:tiny",
        "pretrained": True,
        "epochs": 1,
        "schedule": "linear-probe",
        "probe": "converge",
    }
    Engine.from_plugins(ZooPlugin(trained), entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=False
    )
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    random = trained is False  # None: the weights line "zoo v1" reads as trained weights
    assert config["resolved"]["backbone"]["pretrained"] is not random
    assert ("estimated from" in out) is random
    assert ("trains only the head on its random features" in out) is random


def test_list_backbones_shows_each_providers_options(capsys):
    code, out, err = tlplug(capsys, "list", "backbones", "timm:resnet1*")
    assert code == 0 and out.startswith("timm:resnet1")  # stdout: one model a line
    assert err.startswith("timm: provider options (--backbone-opt): drop_rate=None")
    code, out, err = tlplug(capsys, "list", "backbones", "torchvision:resnet18")
    assert err.splitlines()[0] == (
        "torchvision: provider options (--backbone-opt): pre_logits=True (bool)"
    )


class Subset:
    """A data source with options: the synthetic set, ``every`` n-th training image."""

    @hookimpl
    def tlplug_register_data_sources(self, register):
        def subset(location, seed, val_split, *, every: int = 1, note: str = "none"):
            """The synthetic set, every n-th training image."""
            from tlplug.data.synthetic import synthetic_splits

            return synthetic_splits(seed=seed)

        register("subset", subset)


def test_a_data_sources_options_are_recorded_typed_with_defaults(tmp_path):
    recipe = {**TINY, "epochs": 1, "schedule": "linear-probe", "data_opts": {"every": "2"}}
    result = Engine.from_plugins(Subset(), entrypoints=False, **recipe).fit(
        "subset:", out=tmp_path / "run", quiet=True
    )
    data = json.loads((result.run_dir / "config.json").read_text())["resolved"]["data"]
    assert data["source"] == "subset" and data["plugin"] == "Subset-0"
    assert data["options"] == {"every": 2, "note": "none"}  # typed, and the defaults too


def test_the_python_api_words_its_advice_for_python(image_folder, tmp_path, capsys):
    recipe = {**TINY, "epochs": 1, "schedule": "linear-probe"}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=tmp_path / "a")
    said = capsys.readouterr().out
    assert "(pretrained=True, weights)" in said and "schedule='full'" in said
    assert "--pretrained" not in said and "--schedule" not in said
    code, out, _ = tlplug(
        capsys,
        "run",
        "--data",
        image_folder,
        "--out",
        tmp_path / "b",
        "--epochs",
        "1",
        "--schedule",
        "linear-probe",
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        "32",
        "--workers",
        "0",
        "--no-plots",
    )
    assert code == 0 and "(--pretrained, --weights)" in out and "--schedule full" in out


def test_resuming_without_the_plugin_a_run_was_made_with_says_how(image_folder, tmp_path):
    from tlplug import Stage

    class TwoStep:
        @hookimpl
        def tlplug_register_schedules(self, register):
            def two(groups, epochs):
                """The head, then everything."""
                return [Stage(0, groups[-1:]), Stage(1, groups)]

            register("two", two)

    plugin = TwoStep()
    recipe = {**TINY, "schedule": "two", "keep_state": True}
    Engine.from_plugins(plugin, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    with pytest.raises(TlplugError) as refused:
        Engine.resume(tmp_path / "run", entrypoints=False, epochs=3, quiet=True)
    message = str(refused.value)
    assert "unknown schedule 'two'" in message and "\n" not in message
    assert "it was trained with plugin(s) TwoStep-0" in message
    assert "Engine.resume(run_dir, plugin)" in message
    result = Engine.resume(tmp_path / "run", plugin, entrypoints=False, epochs=3, quiet=True)
    assert result.history[-1]["epoch"] == 3
