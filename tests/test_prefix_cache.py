"""Replaying the frozen prefix: a partly trained backbone runs its frozen layers once."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tlplug import Engine, Stage
from tlplug.plugins.resolve import build_backbone, build_model
from tlplug.train.prefix_cache import Replay, find_cut, prefix_output
from tlplug.train.stages import top_groups

GRADUAL = dict(
    backbone="timm:resnet10t",
    pretrained=False,
    img_size=32,
    batch_size=8,
    workers=0,
    schedule="gradual",
    augment=(),
    epochs=4,
    optimizer="sgd",
    lr=0.05,
    keep_state=True,
    probe="epochs",  # the head stage takes steps, so cached and plain runs can be compared
)


def model_of(backbone: str, img_size: int, **opts):
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone=backbone,
        pretrained=False,
        img_size=img_size,
        backbone_opts=opts,
    )
    built, _ = build_backbone(engine.parts.provider, engine.recipe)
    return build_model(engine.parts.head, built, 3).eval()


@pytest.mark.parametrize(
    ("backbone", "size", "opts", "cut"),
    [
        ("timm:resnet10t", 32, {}, "layer3"),
        ("torchvision:resnet18", 32, {}, "layer3"),
        ("timm:vit_tiny_patch16_224", 32, {}, "blocks.10"),
        ("timm:mobilenetv3_small_050", 32, {}, "global_pool"),  # conv_head runs after it
    ],
)
def test_the_cut_sits_below_the_top_group_and_replays_the_network(backbone, size, opts, cut):
    torch.manual_seed(0)
    model = model_of(backbone, size, **opts)
    stage = Stage(0, top_groups(model.group_names(), 2))
    found = find_cut(model, stage, size, torch.device("cpu"))
    assert found is not None and found.name == cut
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(images)
        prefix = prefix_output(model, found, images)
        with found.replaying():
            got = Replay(model, found, torch.zeros(1, 3, 1, 1))(prefix)
    torch.testing.assert_close(got, expected)
    assert "forward" not in vars(found.cut)  # the stubs are gone after the block


def test_no_cut_while_everything_trains():
    model = model_of("timm:resnet10t", 32)
    assert find_cut(model, Stage(0, model.group_names()), 32, torch.device("cpu")) is None


def test_replayed_gradual_run_matches_the_plain_one_and_moves_its_cut_at_unfreeze(
    image_folder, tmp_path
):
    runs = {}
    for mode in ("auto", "off"):
        engine = Engine.from_plugins(entrypoints=False, cache_features=mode, **GRADUAL)
        runs[mode] = engine.fit(image_folder, out=tmp_path / mode, quiet=True).history
    # Each unfreeze drops the cache and cuts one group lower.
    assert [r["prefix_cache"] for r in runs["auto"]] == [None, "layer3", "layer2", "layer1"]
    assert [r["feature_cache"] for r in runs["auto"]] == [True, False, False, False]
    assert [r["prefix_cache"] for r in runs["off"]] == [None] * 4
    for key in ("train_loss", "val_loss"):
        cached, plain = ([r[key] for r in runs[m]] for m in ("auto", "off"))
        assert cached == pytest.approx(plain, rel=1e-5)
    a = load_file(tmp_path / "auto" / "resume.safetensors")
    b = load_file(tmp_path / "off" / "resume.safetensors")
    for key in a:
        if key.startswith("model."):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
