"""Backbone providers: real timm and torchvision models, their groups, features and data config."""

import pytest
import torch

from tlplug.model.backbone import check_groups
from tlplug.plugins.host import PluginHost


@pytest.fixture(scope="module")
def providers():
    registry = PluginHost(entrypoints=False).registry("backbones")
    return {name: registry.get(name).factory for name in ("timm", "torchvision")}


def names(backbone):
    return [g.name for g in backbone.groups]


def features(backbone, size):
    with torch.no_grad():
        return backbone.module.eval()(torch.randn(2, 3, size, size))


def test_timm_resnet(providers):
    backbone = providers["timm"].create("resnet18", False, None)
    assert names(backbone) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.num_features == 512
    assert backbone.classifier == ("fc",)
    assert backbone.data_config.interpolation == "bicubic"
    assert backbone.data_config.mean == pytest.approx((0.485, 0.456, 0.406))
    assert features(backbone, 64).shape == (2, 512)
    check_groups(backbone.module, backbone.groups)


def test_timm_mobilenet_features_are_after_conv_head(providers):
    backbone = providers["timm"].create("mobilenetv3_small_050", False, None)
    assert backbone.num_features == 1024
    assert features(backbone, 32).shape == (2, 1024)
    assert names(backbone)[-1] == "conv_head"


def test_timm_vit_gets_img_size(providers):
    backbone = providers["timm"].create("vit_tiny_patch16_224", False, 32)
    assert features(backbone, 32).shape == (2, 192)
    assert names(backbone)[0] == "stem" and names(backbone)[-1] == "blocks.11+norm"
    assert len(backbone.groups) == 13


def test_timm_backbone_group_never_takes_the_head_name(providers):
    backbone = providers["timm"].create("convnext_atto", False, None)
    assert names(backbone) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.norm"]


def test_torchvision_resnet(providers):
    backbone = providers["torchvision"].create("resnet18", False, None)
    assert names(backbone) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert backbone.num_features == 512
    assert backbone.classifier == ("fc",)
    assert backbone.data_config.input_size == 224
    assert backbone.data_config.crop_pct == pytest.approx(224 / 256)
    assert features(backbone, 64).shape == (2, 512)


def test_torchvision_pre_logits_option(providers):
    kept = providers["torchvision"].create("mobilenet_v3_small", False, None)
    assert kept.num_features == 1024 and names(kept)[-1] == "pre_logits"
    dropped = providers["torchvision"].create("mobilenet_v3_small", False, None, pre_logits=False)
    assert dropped.num_features == 576 and "pre_logits" not in names(dropped)
    assert features(dropped, 64).shape == (2, 576)
    assert dropped.classifier == ("classifier.0", "classifier.3")


def test_torchvision_vit_is_rebuilt_for_img_size(providers):
    backbone = providers["torchvision"].create("vit_b_16", False, 32)
    assert features(backbone, 32).shape == (2, 768)
    assert names(backbone)[:2] == ["stem", "block0"]


def test_wildcard_listing(providers):
    assert "convnext_atto" in providers["timm"].list_models("*convnext*")
    assert all("convnext" in n for n in providers["timm"].list_models("*convnext*"))
    assert providers["torchvision"].list_models("resnet1*") == [
        "resnet101",
        "resnet152",
        "resnet18",
    ]
    assert providers["timm"].describe("resnet18").startswith("pretrained: ")
    assert "IMAGENET1K_V1" in providers["torchvision"].describe("resnet18")


def test_timm_feature_encoder_without_classifier_is_pooled(providers):
    backbone = providers["timm"].create("qwen3_vit_88m_enc", False, 32)
    assert backbone.num_features == 1024
    assert features(backbone, 32).shape == (2, 1024)
    check_groups(backbone.module, backbone.groups)
