"""Each built-in augmentation runs on a uint8 image tensor and keeps its shape and type."""

import random

import pytest
import torch

from tlplug.backbone import DataConfig
from tlplug.data.synthetic import draw
from tlplug.data.transforms import build_transforms
from tlplug.plugins import PluginHost

REGISTRY = PluginHost(entrypoints=False).registry("augmentations")


@pytest.mark.parametrize("name", REGISTRY.names())
def test_augmentation_on_a_tiny_image(name):
    torch.manual_seed(0)
    augment = REGISTRY.get(name).factory(32)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = augment(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def test_train_and_eval_transforms():
    config = DataConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
    base, train, evaluate = build_transforms(config, 32, [REGISTRY.get("flip").factory(32, p=1.0)])
    pixels = base(draw("stripes", random.Random(0)))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    a, b = train(pixels), evaluate(pixels)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b.flip(-1))
    assert b.min() >= -1.0 and b.max() <= 1.0
