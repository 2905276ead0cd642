"""Weights files from elsewhere load into the backbones that need more than a plain
state dict: modules that read the state dict's version metadata (MNASNet), and models that
compute integer buffers themselves, which a converted file may leave out."""

from __future__ import annotations

import torch
import torchvision
from safetensors.torch import save_file

from tlplug import Engine
from tlplug.plugins.resolve import build_backbone


def built_with_weights(path, backbone: str, img_size: int | None):
    engine = Engine.from_plugins(
        entrypoints=False, backbone=backbone, weights=str(path), img_size=img_size
    )
    return build_backbone(engine.parts.provider, engine.recipe)


def test_mnasnet_loads_from_safetensors_for_training_and_prediction(image_folder, tmp_path, tiny):
    torch.manual_seed(3)
    plain = torchvision.models.mnasnet0_5().state_dict()  # its module asks for version 2
    save_file({k: v.contiguous() for k, v in plain.items()}, tmp_path / "mnasnet.safetensors")
    built, report = built_with_weights(
        tmp_path / "mnasnet.safetensors", "torchvision:mnasnet0_5", 32
    )
    assert report.loaded == len(plain) - 2  # all but the classifier
    assert torch.equal(built.module.state_dict()["layers.0.weight"], plain["layers.0.weight"])
    tiny.update(backbone="torchvision:mnasnet0_5", epochs=1, schedule="full")
    Engine.from_plugins(entrypoints=False, **tiny).fit(
        image_folder, out=tmp_path / "run", quiet=True
    )
    classifier = Engine.load(tmp_path / "run", entrypoints=False)  # model.safetensors back in
    assert classifier.predict([next((image_folder / "val" / "dots").iterdir())], topk=1)


def test_integer_buffers_a_model_computes_may_be_absent(tmp_path):
    torch.manual_seed(4)
    plain = torchvision.models.swin_t().state_dict()
    kept = {k: v.contiguous() for k, v in plain.items() if "relative_position_index" not in k}
    assert len(plain) - len(kept) == 12
    save_file(kept, tmp_path / "swin.safetensors")
    built, report = built_with_weights(tmp_path / "swin.safetensors", "torchvision:swin_t", None)
    own = built.module.state_dict()
    for key, value in plain.items():
        if "relative_position_index" in key:
            assert torch.equal(own[key], value)  # computed when the model was built
    assert report.loaded == len(kept) - 2


def test_errors_in_python_name_the_arguments_not_the_flags(tmp_path, monkeypatch):
    import pytest

    from tlplug import TlplugError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine.from_plugins(entrypoints=False, backbone="timm:resnet10t", epochs=1)
    with pytest.raises(TlplugError) as caught:
        engine.fit(out=tmp_path / "r", quiet=True)
    message = str(caught.value)
    assert "weights='FILE'" not in message and "weights=FILE" in message
    assert "pretrained=False" in message and "--" not in message
    with pytest.raises(TlplugError, match="^img_size must be at least 16, got 8$"):
        Engine.from_plugins(entrypoints=False, img_size=8)
