"""Training with the installed plugin: what is pinned, what trains, what is saved."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file
from tlplug import Engine, hookimpl
from tlplug.cli import main
from tlplug.rundir.checkpoint import read_resume

from helpers import FAST, RESNET, VIT, Watch, changed, head_names, lora_names


@pytest.fixture(scope="module")
def vit_run(image_folder, tmp_path_factory):
    """One epoch of ``--adapter lora --schedule lora`` on a ViT; the plugin comes from its
    entry point."""
    watch = Watch()
    engine = Engine.from_plugins(watch, backbone=VIT, adapter="lora", schedule="lora", **FAST)
    result = engine.fit(image_folder, epochs=1, out=tmp_path_factory.mktemp("vit"), quiet=True)
    return watch, result


def test_lora_schedule_trains_lora_and_head_and_pins_the_rest(vit_run):
    watch, _ = vit_run
    model = watch.run.model
    start, end = watch.states[0], watch.states[-1]
    lora = lora_names(model)
    backbone = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    assert len(lora) == 12 * 4 * 2  # qkv, proj, fc1, fc2 in 12 blocks; A and B each
    assert model.pinned == set(backbone) - set(lora)
    assert "backbone.blocks.0.attn.qkv.base_layer.weight" in model.pinned
    assert "backbone.blocks.0.norm1.bias" in model.pinned
    assert changed(start, end, model.pinned) == []
    assert changed(start, end, lora) == lora
    assert changed(start, end, head_names(model)) == head_names(model)


def test_saved_weights_are_the_plain_model_with_lora_merged(vit_run):
    watch, result = vit_run
    saved = load_file(result.run_dir / "model.safetensors")
    plain = timm.create_model(VIT.partition(":")[2], num_classes=0, img_size=32)
    expected = {f"backbone.{k}": v.shape for k, v in plain.state_dict().items()}
    expected |= {"head.0.weight": (3, 192), "head.0.bias": (3,)}
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(s) for k, s in expected.items()
    }
    live = watch.run.model.eval()
    now = live.state_dict()
    qkv = "backbone.blocks.0.attn.qkv."
    merged = now[qkv + "base_layer.weight"] + 16 / 8 * (  # alpha / r
        now[qkv + "lora_B.default.weight"] @ now[qkv + "lora_A.default.weight"]
    )
    torch.testing.assert_close(saved[qkv + "weight"], merged)
    assert not torch.equal(saved[qkv + "weight"], now[qkv + "base_layer.weight"])
    assert changed(watch.states[0], now, live.pinned) == []  # saving changed nothing

    loaded = Engine.load(result.run_dir)  # the plain model: no adapter, no peft modules
    assert not any(type(m).__module__.startswith("peft") for m in loaded.modules())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the loaded model's logits are calibrated: divided by its temperature
        expected = live(images) / loaded.model.temperature
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=1e-5)


def test_predict_cli_uses_the_merged_weights(vit_run, image_folder, capsys):
    _, result = vit_run
    image = next((image_folder / "val" / "dots").iterdir())
    main(["predict", str(result.run_dir), str(image), "--topk", "1", "--json"])
    assert '"class"' in capsys.readouterr().out


def test_gradual_unfreezes_lora_group_by_group(image_folder, tmp_path):
    watch = Watch()
    engine = Engine.from_plugins(
        watch, backbone=VIT, adapter="lora", schedule="gradual", lr_decay=0.5, **FAST
    )
    engine.fit(image_folder, epochs=2, out=tmp_path, quiet=True)
    model = watch.run.model
    start, head_only, top_too = watch.states
    top = [n for n in lora_names(model) if n.startswith("backbone.blocks.11.")]
    lower = [n for n in lora_names(model) if n not in top]
    backbone = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    assert changed(start, head_only, backbone) == []
    assert changed(start, head_only, head_names(model)) == head_names(model)
    assert changed(head_only, top_too, top) == top
    assert changed(start, top_too, lower) == []
    assert changed(start, top_too, model.pinned) == []
    # The top group's LoRA factors sit in its optimizer group, at its decayed LR.
    group = next(
        g for g in watch.run.optimizer.param_groups if g["name"] == "blocks.11+norm" and g["params"]
    )
    params = dict(model.named_parameters())
    assert any(p is params[top[0]] for p in group["params"])
    assert group["lr_mult"] == 0.5


def test_lora_on_a_convnet(image_folder, resnet_weights, tmp_path):
    watch = Watch()
    engine = Engine.from_plugins(
        watch, backbone=RESNET, weights=resnet_weights, adapter="lora", schedule="lora", **FAST
    )
    result = engine.fit(image_folder, epochs=1, out=tmp_path, quiet=True)
    model = watch.run.model
    start, end = watch.states
    adapted = {n.partition(".lora_")[0] for n in lora_names(model)}
    convs = {
        "backbone." + n
        for n, m in timm.create_model("resnet10t").named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }
    assert adapted == convs - {"backbone.conv1.0"}  # every conv but the one on the pixels
    assert changed(start, end, model.pinned) == []
    assert changed(start, end, lora_names(model)) == lora_names(model)
    live = model.eval()
    images = torch.randn(4, 3, 32, 32)
    loaded = Engine.load(result.run_dir)
    with torch.no_grad():  # the loaded model's logits are calibrated: divided by its temperature
        expected = live(images) / loaded.model.temperature
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=1e-5)


class CrashAt:
    """A plugin that makes the run fail at the end of ``epoch``."""

    name = "crash"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        if run.epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resumed_lora_run_ends_like_an_uninterrupted_one(image_folder, resnet_weights, tmp_path):
    recipe = dict(FAST, backbone=RESNET, weights=resnet_weights, epochs=2, keep_state=True)
    recipe |= {"adapter": "lora", "schedule": "lora"}  # LoRA trains before the crash
    Engine.from_plugins(**recipe).fit(image_folder, out=tmp_path / "whole", quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Engine.from_plugins(CrashAt(2), **recipe).fit(
            image_folder, out=tmp_path / "cut", quiet=True
        )
    assert read_resume(tmp_path / "cut" / "resume.safetensors").epoch == 1
    Engine.resume(tmp_path / "cut", quiet=True)  # attaches the adapter, restores LoRA
    whole, cut = (load_file(tmp_path / run / "resume.safetensors") for run in ("whole", "cut"))
    model_keys = [k for k in whole if k.startswith("model.")]
    assert any(".lora_B." in k for k in model_keys)
    assert all(torch.equal(whole[k], cut[k]) for k in model_keys)
    whole, cut = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "cut"))
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_lora_schedule_alone_never_fine_tunes_the_backbone(image_folder, tmp_path):
    watch = Watch()
    engine = Engine.from_plugins(watch, backbone=RESNET, schedule="lora", **FAST)
    assert engine.recipe.adapter == "lora"  # the schedule names its adapter
    engine.fit(image_folder, epochs=1, out=tmp_path, quiet=True)
    assert watch.run.model.pinned
    assert changed(watch.states[0], watch.states[-1], watch.run.model.pinned) == []


def test_in_two_processes_lora_trains_as_in_one(image_folder, resnet_weights, tmp_path):
    # The data-parallel wrapper covers what trains (the LoRA factors and the head), made
    # when the adapter is in place.
    args = [
        "run",
        "--data",
        str(image_folder),
        "--backbone",
        RESNET,
        "--weights",
        str(resnet_weights),
        "--img-size",
        "32",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--epochs",
        "2",
        "--adapter",
        "lora",
        "--schedule",
        "lora",
        "--precision",
        "fp32",
        "--bn-policy",
        "eval",
        "--keep-state",
        "--no-plots",
        "--quiet",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    for out, more in (("one", []), ("two", ["--nproc", "2"])):
        done = subprocess.run(
            [sys.executable, "-m", "tlplug", *args, "--out", str(tmp_path / out), *more],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (read_resume(tmp_path / d / "resume.safetensors").tensors for d in ("one", "two"))
    moved = 0
    for key, value in one.items():
        if key.startswith("model."):
            torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5)
            moved += "lora_" in key
    assert moved  # the factors are in the state and match
