"""Name resolution: registries, PROVIDER:NAME parsing and errors that list close matches."""

import pytest

from tlplug import Engine, TlplugError, UnknownNameError, hookimpl
from tlplug.errors import OptionError
from tlplug.plugins.host import PluginHost
from tlplug.plugins.registry import split_backbone


@pytest.fixture(scope="module")
def host():
    return PluginHost(entrypoints=False)


def test_builtin_names(host):
    assert host.registry("heads").names() == ["linear", "mlp"]
    assert host.registry("schedules").names() == [
        "bitfit",
        "freeze-unfreeze",
        "full",
        "gradual",
        "linear-probe",
        "lp-ft",
        "milestones",
    ]
    assert host.registry("lr-schedules").names() == [
        "constant",
        "cosine",
        "onecycle",
        "plateau",
        "step",
    ]
    assert host.registry("augmentations").names() == [
        "autoaugment",
        "color-jitter",
        "crop",
        "cutmix",
        "flip",
        "mixup",
        "randaugment",
        "random-erasing",
        "trivialaugment",
    ]
    assert host.registry("backbones").names() == ["timm", "torchvision"]
    assert host.registry("data-sources").names() == [
        "csv",
        "folder",
        "hf",
        "shards",
        "synthetic",
        "torchvision",
    ]
    assert host.registry("adapters").names() == host.registry("regularizers").names() == []


def test_unknown_strategy_suggests_close_match(host):
    with pytest.raises(
        UnknownNameError, match="unknown schedule 'graduall'; did you mean 'gradual'"
    ):
        host.registry("schedules").get("graduall")


def test_unknown_model_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'timm:resnet50'"):
        Engine.from_plugins(entrypoints=False, backbone="timm:resnet5O").fit()


def test_unknown_torchvision_model():
    with pytest.raises(UnknownNameError, match="did you mean 'torchvision:resnet18'"):
        Engine.from_plugins(entrypoints=False, backbone="torchvision:resnet1B").fit()


def test_unknown_provider_suggests_close_match():
    with pytest.raises(
        UnknownNameError, match="unknown backbone provider 'tim'; did you mean 'timm'"
    ):
        Engine.from_plugins(entrypoints=False, backbone="tim:resnet50")


def test_backbone_needs_provider():
    assert split_backbone("timm:vit_base_patch16_224.augreg_in21k") == (
        "timm",
        "vit_base_patch16_224.augreg_in21k",
    )
    with pytest.raises(TlplugError, match="must be PROVIDER:NAME, for example timm:resnet50"):
        split_backbone("resnet50")


def test_unknown_strategy_option_fails_when_engine_is_made():
    with pytest.raises(OptionError, match="schedule 'gradual' has no option 'epochs_per_stag'"):
        Engine.from_plugins(
            entrypoints=False, schedule="gradual", schedule_opts={"epochs_per_stag": 2}
        )


def test_unknown_recipe_key():
    with pytest.raises(OptionError, match="unknown recipe setting 'learning_rate'"):
        Engine.from_plugins(entrypoints=False, learning_rate=0.1)


class Clashing:
    """Registers a head under a built-in's name."""

    name = "clashing"

    @hookimpl
    def tlplug_register_heads(self, register):
        register("linear", lambda num_features, num_classes: None)


def test_duplicate_name_is_an_error_naming_both_plugins_and_can_be_qualified():
    registry = PluginHost([Clashing()], entrypoints=False).registry("heads")
    with pytest.raises(
        TlplugError, match="registered by both 'heads' and 'clashing'.*'clashing/linear'"
    ):
        registry.get("linear")
    assert registry.get("heads/linear").plugin == "heads"
    assert registry.get("clashing/linear").plugin == "clashing"
    assert registry.get("mlp").plugin == "heads"


def test_descriptions_are_whole_sentences():
    from tlplug.plugins.registry import summary_of

    def two(groups, epochs):
        """Train the head for a while, e.g. two epochs, then
        everything. After that, nothing."""

    def paragraph(img_size):
        """Random erasing: with probability ``p``, a box replaced

        The box covers a fraction ``scale`` of the image."""

    assert summary_of(two) == "Train the head for a while, e.g. two epochs, then everything."
    assert summary_of(paragraph) == "Random erasing: with probability ``p``, a box replaced"
    descriptions = PluginHost(entrypoints=False).registry("lr-schedules").strategies()
    assert all(s.description.endswith(".") for s in descriptions)
