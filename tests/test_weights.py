"""Weights: the saved backbone loads into plain timm/torchvision models; --weights files and
the pretrained caches load safely; a pickle that would run code is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from tlplug import Engine, WeightsError
from tlplug.model.pretrained_cache import check_safe_pickle
from tlplug.plugins.host import PluginHost
from tlplug.rundir.weights import read_state_dict


class Payload:
    """Pickles to a call that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def backbone_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_file(run_dir / "model.safetensors")
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize(
    ("backbone", "plain"),
    [
        ("timm:resnet10t", lambda: timm.create_model("resnet10t", num_classes=3)),
        ("torchvision:resnet18", lambda: torchvision.models.resnet18(num_classes=3)),
    ],
)
def test_saved_backbone_loads_into_the_plain_model(backbone, plain, image_folder, tmp_path, tiny):
    tiny.update(backbone=backbone, epochs=1, schedule="full")
    result = Engine.from_plugins(entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path, quiet=True
    )
    model = plain()
    missing, unexpected = model.load_state_dict(backbone_tensors(result.run_dir), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []

    classifier = Engine.load(result.run_dir, entrypoints=False)
    model.fc = nn.Identity()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), classifier.model.backbone(images))
    head = load_file(result.run_dir / "model.safetensors")
    assert sorted(k for k in head if k.startswith("head.")) == ["head.0.bias", "head.0.weight"]


def plain_resnet10t_state(seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=1000).state_dict()


def create_with_weights(path: Path, backbone: str = "timm:resnet10t", partial: bool = False):
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone=backbone,
        weights=str(path),
        weights_partial=partial,
        img_size=32,
    )
    from tlplug.plugins.resolve import build_backbone

    return build_backbone(engine.parts.provider, engine.recipe)


def test_weights_safetensors_ignores_classifier(tmp_path):
    state = plain_resnet10t_state()
    save_file(state, tmp_path / "w.safetensors")
    backbone, report = create_with_weights(tmp_path / "w.safetensors")
    assert sorted(report.ignored_classifier) == ["fc.bias", "fc.weight"]
    assert report.unexpected == ()
    own = backbone.module.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert backbone.weights.startswith("file ")


def test_weights_pth_wrapped_and_prefixed(tmp_path):
    state = plain_resnet10t_state()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "w.pth")
    backbone, report = create_with_weights(tmp_path / "w.pth")
    assert report.unexpected == report.missing == ()
    assert torch.equal(backbone.module.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_a_file_for_a_deeper_sibling_is_refused_unless_partial(tmp_path):
    """A resnet34 state dict holds every tensor of a resnet18 in its shape, and 80 more
    (and 16 BatchNorm counters)."""
    torch.manual_seed(0)
    deeper = timm.create_model("resnet34").state_dict()
    save_file(deeper, tmp_path / "r34.safetensors")
    with pytest.raises(WeightsError) as refused:
        create_with_weights(tmp_path / "r34.safetensors", "timm:resnet18")
    message = str(refused.value)
    assert "80 tensors this model does not have (layer1.2." in message
    assert "weights_partial" in message and "\n" not in message
    backbone, report = create_with_weights(tmp_path / "r34.safetensors", "timm:resnet18", True)
    own = backbone.module.state_dict()
    assert report.loaded == len([k for k in own if k in deeper]) > 100
    assert all(torch.equal(own[k], deeper[k]) for k in own)
    assert len(report.unexpected) == 80 and report.missing == ()
    assert "80 in the file not loaded (layer1.2." in report.summary()


def test_a_partial_load_of_a_file_of_another_model_loads_what_fits(tmp_path):
    state = plain_resnet10t_state()
    state["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del state["layer1.0.conv1.weight"]
    save_file(state, tmp_path / "w.safetensors")
    backbone, report = create_with_weights(tmp_path / "w.safetensors", partial=True)
    assert report.missing == ("layer1.0.conv1.weight", "layer4.0.conv1.weight")
    assert report.unexpected == ("layer4.0.conv1.weight",)
    assert torch.equal(backbone.module.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    save_file({"other.weight": torch.zeros(2)}, tmp_path / "none.safetensors")
    with pytest.raises(WeightsError, match="has no tensor of this model"):
        create_with_weights(tmp_path / "none.safetensors", partial=True)


def test_weights_of_a_tlplug_run_start_a_new_run(image_folder, tmp_path, tiny):
    tiny.update(epochs=1, schedule="full")
    result = Engine.from_plugins(entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path / "a", quiet=True
    )
    backbone, report = create_with_weights(result.run_dir / "model.safetensors")
    expected = backbone_tensors(result.run_dir)
    own = backbone.module.state_dict()
    assert all(torch.equal(own[k], expected[k]) for k in expected)
    assert report.ignored_classifier == ()


def test_weights_for_another_architecture_name_the_keys(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"3 tensor shapes differ \(layer2\.0\.downsample\.1"):
        create_with_weights(tmp_path / "r18.pth")
    del_downsample = {
        k: v for k, v in torchvision.models.resnet18().state_dict().items() if "downsample" not in k
    }
    torch.save(del_downsample, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"lacks \d+ of this model's tensors \(conv1\.0\.weight"):
        create_with_weights(tmp_path / "partial.pth")
    # timm and torchvision ResNets share key names, so this one fits.
    _, report = create_with_weights(tmp_path / "r18.pth", "timm:resnet18")
    assert report.ignored_classifier == ("fc.weight", "fc.bias")


def test_weights_with_wrong_shapes(tmp_path):
    state = plain_resnet10t_state()
    state["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"1 tensor shapes differ \(layer4\.0\.conv1\.weight"):
        create_with_weights(tmp_path / "w.safetensors")


def test_truncated_safetensors(tmp_path):
    save_file(plain_resnet10t_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file.*truncated"):
        read_state_dict(tmp_path / "w.safetensors")


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1.0.weight": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing to load .*evil.pth"):
        read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing"):
        check_safe_pickle(tmp_path / "evil.pth")
    assert not marker.exists()


def test_torchvision_pretrained_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cache.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cache)
    provider = PluginHost(entrypoints=False).registry("backbones").get("torchvision").factory
    backbone = provider.create("resnet18", True, None)
    own = backbone.module.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert backbone.weights == f"torchvision {weights}"

    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": Payload(marker)}, cache)
    with pytest.raises(WeightsError, match="refusing to load"):
        provider.create("resnet18", True, None)
    assert not marker.exists()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlplug", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_timm_pretrained_from_hf_cache_offline(image_folder, tmp_path):
    """Locally made weights in the Hugging Face cache are what a pretrained run starts from."""
    hub = tmp_path / "hf" / "hub" / "models--timm--resnet10t.c3_in1k"
    snapshot = hub / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0123456789abcdef")
    state = plain_resnet10t_state(seed=11)
    save_file(state, snapshot / "model.safetensors")

    out = tmp_path / "run"
    result = run_cli(
        "run",
        "--data",
        str(image_folder),
        "--backbone",
        "timm:resnet10t",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--schedule",
        "linear-probe",
        "--out",
        str(out),
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["backbone"]["weights"] == "timm pretrained timm/resnet10t.c3_in1k"
    # A linear probe leaves the backbone untouched: every tensor is the cached one.
    saved = backbone_tensors(out)
    assert saved and all(torch.equal(saved[k], state[k]) for k in saved)


def test_pretrained_not_cached_offline_names_the_ways_out(tmp_path):
    result = run_cli(
        "run",
        "--backbone",
        "timm:resnet10t",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "r"),
        HF_HOME=str(tmp_path / "empty"),
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot get pretrained weights")
    assert "--weights" in lines[0] and "--no-pretrained" in lines[0]
    assert not (tmp_path / "r").exists()
