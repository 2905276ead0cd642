"""The transfer mechanics on a representative set of timm and torchvision architectures.

Each model is built the way a run builds it (random init), split into layer groups, and
stepped once per stage of a gradual plan that unfreezes one group at a time; see
:mod:`tlplug.mechanics_check` for what is checked. scripts/sweep_backbones.py runs the same
check over every classification model of both libraries.
"""

from __future__ import annotations

import pytest

from tlplug.mechanics_check import check_mechanics
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, choose
from tlplug.recipe import Recipe

ARCHITECTURES = [
    ("timm:resnet10t", 32),
    ("torchvision:resnet18", 32),
    ("torchvision:vgg11", 32),  # a fully connected classifier of its own (pre-logits group)
    ("torchvision:densenet121", 32),
    ("torchvision:mobilenet_v2", 32),
    ("timm:mobilenetv3_small_050", 32),
    ("torchvision:efficientnet_b0", 32),
    ("timm:efficientnet_b0", 32),
    ("timm:regnetx_002", 32),
    ("timm:convnext_atto", 32),
    ("timm:vit_tiny_patch16_224", 32),
    ("torchvision:swin_t", 64),
    ("torchvision:squeezenet1_1", 64),  # a conv classifier
    ("torchvision:googlenet", 32),  # auxiliary heads
    ("torchvision:inception_v3", 80),  # auxiliary head, needs 75 px or more
    ("timm:coat_lite_tiny", 64),  # modules shared by two paths, root tokens in several groups
]


@pytest.fixture(scope="module")
def providers():
    return PluginHost(entrypoints=False)


@pytest.mark.parametrize(("name", "size"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_one_step_per_stage_freezes_exactly(providers, name, size):
    recipe = Recipe(backbone=name, pretrained=False, img_size=size)
    provider = choose(providers, "backbones", name.partition(":")[0], {})
    backbone, _ = build_backbone(provider, recipe)
    assert len(backbone.groups) >= 3
    assert check_mechanics(backbone, size) == []
