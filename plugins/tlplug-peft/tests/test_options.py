"""The plugin as installed: what it registers, and the errors a user sees."""

from __future__ import annotations

import pytest
from tlplug import Engine, OptionError
from tlplug.cli import main
from tlplug.plugins.host import PluginHost

from helpers import FAST, RESNET, VIT


def test_entry_point_registers_the_adapter_and_the_schedule():
    info = next(i for i in PluginHost().all_infos() if i.distribution == "tlplug-peft")
    assert info.status == "loaded", info.error
    assert info.registers["adapters"] == ["lora"]
    assert info.registers["schedules"] == ["lora"]


def test_adapter_options_are_typed_from_the_cli(image_folder, tmp_path, capsys):
    args = ["run", "--data", image_folder, "--backbone", RESNET, "--no-pretrained"]
    args += ["--img-size", "32", "--batch-size", "6", "--workers", "0", "--epochs", "1"]
    args += ["--adapter", "lora", "--adapter-opt", "r=0", "--out", tmp_path / "run", "--quiet"]
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "Error: lora option r must be >= 1, got 0\n"


@pytest.mark.parametrize(
    ("backbone", "options", "message"),
    [
        (RESNET, {"alpha": 0}, "alpha must be > 0"),
        (RESNET, {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        (VIT, {"targets": "qvk"}, "lora target 'qvk' matches no layer.*did you mean 'qkv'"),
        (VIT, {"targets": "norm1"}, r"matches only layers lora cannot adapt \(LayerNorm"),
        (RESNET, {"targets": r"layer9\..*"}, "regex .* matches no layer"),
        (RESNET, {"targets": "layer1.(0"}, "not a valid regex"),
        (RESNET, {"targets": " , "}, "targets is empty"),
    ],
)
def test_bad_options_are_one_line_errors(image_folder, tmp_path, backbone, options, message):
    engine = Engine.from_plugins(backbone=backbone, adapter="lora", adapter_opts=options, **FAST)
    with pytest.raises(OptionError, match=message) as caught:
        engine.fit(image_folder, epochs=1, out=tmp_path, quiet=True)
    assert "\n" not in str(caught.value)


def test_unknown_adapter_option_is_refused_before_any_work():
    with pytest.raises(OptionError, match="adapter 'lora' has no option 'rank'"):
        Engine.from_plugins(backbone=RESNET, adapter="lora", adapter_opts={"rank": 4})
