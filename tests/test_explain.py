"""Grad-CAM maps: they find the evidence a trained model uses, on CNNs and ViTs, through
``tlplug explain`` and in eval's worst-images grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import TINY, tlplug
from tlplug.data.synthetic import write_marked
from tlplug.engine import Engine
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_model, choose
from tlplug.ship import explain
from tlplug.ship.predict import Classifier

pytest.importorskip("captum")

SIZE = 48  # resnet10t's last stage is 2x2 here: one cell per quarter of the image


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> Path:
    """The marked-corner set: "mark" images have a white square in the top-left quarter."""
    return write_marked(tmp_path_factory.mktemp("marked"), train=32, val=8, size=SIZE)


@pytest.fixture(scope="module")
def run(marked, tmp_path_factory) -> Path:
    recipe = {**TINY, "img_size": SIZE, "batch_size": 16, "epochs": 3, "lr": 0.003}
    recipe.update(schedule="full", augment=["none"])
    engine = Engine.from_plugins(entrypoints=False, **recipe)
    return engine.fit(marked, out=tmp_path_factory.mktemp("explain") / "run", quiet=True).run_dir


def test_grad_cam_finds_the_marked_quarter(run, marked):
    classifier = Engine.load(run, entrypoints=False)
    explainer = explain.Explainer(classifier)
    assert explainer.target.path == "backbone.layer4"  # found from the groups, not by name
    files = sorted((marked / "val" / "mark").glob("*.png"))
    pixels = torch.stack([classifier.base(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        predicted = classifier(classifier.normalize(pixels)).argmax(1)
    hits = predicted == classifier.classes.index("mark")
    assert hits.sum() >= 6, "the model did not learn the mark"
    heat = explainer.maps(pixels[hits], predicted[hits].tolist())
    assert heat.shape == (int(hits.sum()), SIZE, SIZE) and (heat >= 0).all()
    quarter = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    quarter[: SIZE // 2, : SIZE // 2] = True
    share = explain.mass_in(heat, quarter)
    assert share.mean() > 0.5, share
    # The threshold means something: a map that ignores the mark does not reach it.
    assert explain.mass_in(torch.ones(1, SIZE, SIZE), quarter) < 0.3
    assert explain.mass_in(heat.flip(1, 2), quarter).mean() < 0.5


def test_explain_writes_overlays_and_json(run, marked, tmp_path, capsys):
    images = [marked / "val" / "mark" / "mark_0.png", marked / "val" / "plain"]
    out = tmp_path / "maps"
    code, stdout, err = tlplug(capsys, "explain", run, *images, "--out", out, "--class", "plain")
    assert code == 0, err
    report = json.loads((out / "explain.json").read_text())
    assert report["method"].startswith("Grad-CAM on the output of backbone.layer4")
    entries = report["images"]
    assert len(entries) == 1 + 8 and entries[0]["source"] == str(images[0])
    classifier = Engine.load(run, entrypoints=False)
    expected = classifier.predict([images[0]], topk=1)[0].top[0]
    first = entries[0]
    assert (first["predicted"], first["prob"]) == pytest.approx(expected)
    assert set(first["maps"]) == {first["predicted"], "plain"}
    for entry in entries:
        assert entry["predicted"] in entry["maps"] and "plain" in entry["maps"]
        for shown in entry["maps"].values():
            with Image.open(shown["file"]) as image:
                assert image.size == (240, 240)  # 48 px enlarged 5x
    assert str(out / "explain.json") in stdout


def test_explain_bad_input_is_one_line(run, marked, tmp_path, capsys):
    image = marked / "val" / "mark" / "mark_0.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    cases = [
        ((run, image, "--class", "plian"), "unknown class 'plian'; did you mean 'plain'?"),
        ((run, broken), f"cannot read image {broken}"),
        ((tmp_path, image), "not a tlplug run directory"),
    ]
    for args, said in cases:
        code, _, err = tlplug(capsys, "explain", *args, "--out", tmp_path / "out")
        assert code == 1 and said in err and len(err.strip().splitlines()) == 1, err


def test_missing_extra_names_it(run, marked, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # what an absent package gives
    image = marked / "val" / "mark" / "mark_0.png"
    code, _, err = tlplug(capsys, "explain", run, image, "--out", tmp_path)
    assert code == 1 and "pip install 'tlplug[explain]'" in err
    assert not explain.available()


def test_eval_grid_shows_the_maps(run, tmp_path, capsys, monkeypatch):
    code, _, err = tlplug(capsys, "eval", run, "--out", tmp_path / "with")
    assert code == 0 and "tlplug[explain]" not in err
    monkeypatch.setattr(explain, "available", lambda: False)
    code, _, err = tlplug(capsys, "eval", run, "--out", tmp_path / "without")
    assert code == 0 and err.count("pip install 'tlplug[explain]'") == 1
    widths = []
    for name in ("with", "without"):
        report = json.loads((tmp_path / name / "eval.json").read_text())
        if not report["worst"]:
            pytest.skip("the model made no mistake to show")
        with Image.open(tmp_path / name / "worst_images.png") as grid:
            widths.append(grid.size[0])
    assert widths[0] > 1.8 * widths[1]  # each mistake has its map beside it


def test_vit_map_covers_the_image():
    host = PluginHost(entrypoints=False)
    provider = choose(host, "backbones", "timm", {})
    backbone = provider.strategy.factory.create("vit_tiny_patch16_224", False, 32)
    model = build_model(choose(host, "heads", "linear", {}), backbone, 3)
    classifier = Classifier(model, ("a", "b", "c"), backbone.data_config, 32, {})
    explainer = explain.Explainer(classifier)
    target = explainer.target
    assert (target.kind, target.path, target.grid, target.prefix) == (
        "tokens",
        "backbone.blocks.11",
        (2, 2),
        1,
    )
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    heat = explainer.maps(pixels, [0, 2])
    assert heat.shape == (2, 32, 32) and (heat >= 0).all() and heat.sum() > 0
    assert explain.overlays(pixels, heat).shape == (2, 3, 32, 32)
