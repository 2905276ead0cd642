"""Which layers ``targets`` selects, on real timm models (no training)."""

from __future__ import annotations

import pytest
import timm
from tlplug import OptionError
from torch import nn

from tlplug_peft.targets import select_targets


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)


def test_auto_on_a_vit_takes_attention_and_mlp_linears(vit):
    chosen = select_targets(vit, "auto")
    assert len(chosen) == 48
    assert {p.rpartition(".")[2] for p in chosen} == {"qkv", "proj", "fc1", "fc2"}
    assert "patch_embed.proj" not in chosen  # the conv on the pixels


def test_suffixes_and_regexes(vit):
    assert select_targets(vit, "qkv, mlp.fc2")[:2] == ["blocks.0.attn.qkv", "blocks.0.mlp.fc2"]
    assert len(select_targets(vit, "qkv,fc2")) == 24
    assert select_targets(vit, r"blocks\.1[01]\.attn\..*") == [
        "blocks.10.attn.qkv",
        "blocks.10.attn.proj",
        "blocks.11.attn.qkv",
        "blocks.11.attn.proj",
    ]
    # A suffix may name a conv too: patch_embed.proj is a plain Conv2d.
    assert "patch_embed.proj" in select_targets(vit, "proj")


def test_auto_leaves_out_what_lora_cannot_merge():
    model = timm.create_model("mobilenetv3_small_050", num_classes=0)
    chosen = select_targets(model, "auto")
    depthwise = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(chosen)
    assert "conv_stem" not in chosen and "blocks.1.0.conv_pw" in chosen
    with pytest.raises(OptionError, match="cannot adapt.*groups|plain ungrouped Conv2d"):
        select_targets(model, "conv_dw")


def test_linears_inside_multihead_attention_are_not_targets():
    layer = nn.TransformerEncoderLayer(16, 2, 32)
    chosen = select_targets(layer, "auto")
    assert chosen == ["linear1", "linear2"]  # not self_attn.out_proj
