"""The built-in export formats: each file, read without tlplug, gives the run's logits and
carries its classes and preprocessing; ``tlplug export`` refuses what it should."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import onnx
import onnxruntime
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import TINY
from tlplug import Engine, TlplugError
from tlplug.builtin import exporters
from tlplug.plugins.host import PluginHost
from tlplug.plugins.registry import summary_of
from tlplug.ship.export import export_run, sample_images
from tlplug.ship.predict import load_classifier
from tlplug.testing import run_cli

CLASSES = ["checker", "dots", "stripes"]


@pytest.fixture(scope="module")
def run_dir(image_folder, tmp_path_factory):
    """One tiny trained run, shared by every test here."""
    out = tmp_path_factory.mktemp("export") / "run"
    recipe = {**TINY, "epochs": 1}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def classifier(run_dir):
    """The run's model as tlplug loads it, to compare the exported files with."""
    return load_classifier(run_dir, PluginHost(entrypoints=False))


def logits(classifier, images: torch.Tensor) -> torch.Tensor:
    """The PyTorch model's logits for ``images``."""
    with torch.no_grad():
        return classifier(images)


def test_onnx_file_runs_in_onnxruntime_at_any_batch_size(capsys, run_dir, classifier, tmp_path):
    out = tmp_path / "pets.onnx"
    code, stdout, stderr = run_cli(capsys, "export", run_dir, "--format", "onnx", "--out", out)
    assert code == 0, stderr
    assert f"wrote {out} (onnx)" in stdout and "max |difference| of logits" in stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):  # the export traced 3 images and was checked on 2
        images = sample_images(classifier, batch)
        (got,) = session.run(["logits"], {"images": images.numpy()})
        assert torch.allclose(torch.from_numpy(got), logits(classifier, images), atol=1e-4)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["img_size"]) == 32
    data = classifier.config["resolved"]["data_config"]
    assert json.loads(props["mean"]) == data["mean"] and json.loads(props["std"]) == data["std"]
    assert props["interpolation"] == data["interpolation"]
    assert json.loads(props["crop_pct"]) == data["crop_pct"]
    assert json.loads((tmp_path / "pets.onnx.json").read_text())["classes"] == CLASSES


def test_onnx_opset_below_18_is_written_as_asked(run_dir, classifier, tmp_path):
    host = PluginHost(entrypoints=False)
    exported = export_run(run_dir, "onnx", {"opset": "17"}, tmp_path / "old.onnx", plugins=host)
    model = onnx.load(exported.path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == CLASSES
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    images = sample_images(classifier, 4)
    (got,) = session.run(["logits"], {"images": images.numpy()})
    assert torch.allclose(torch.from_numpy(got), logits(classifier, images), atol=1e-4)


def test_torchscript_file_runs_in_a_process_without_tlplug(run_dir, classifier, tmp_path):
    host = PluginHost(entrypoints=False)
    exported = export_run(run_dir, "torchscript", out=tmp_path / "model.pt", plugins=host)
    assert exported.max_diff < 1e-5
    images = sample_images(classifier, 5)
    torch.save({"images": images, "logits": logits(classifier, images)}, tmp_path / "io.pt")
    script = textwrap.dedent("""
        import json, sys, torch
        extra = {"tlplug.json": ""}
        model = torch.jit.load(sys.argv[1], _extra_files=extra)
        io = torch.load(sys.argv[2])
        with torch.no_grad():
            diff = (model(io["images"]) - io["logits"]).abs().max().item()
        facts = json.loads(extra["tlplug.json"])
        print(json.dumps({"diff": diff, "facts": facts, "tlplug": "tlplug" in sys.modules}))
    """)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, exported.path, tmp_path / "io.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["diff"] < 1e-5 and not seen["tlplug"]
    assert seen["facts"]["classes"] == CLASSES and seen["facts"]["img_size"] == 32


def test_safetensors_backbone_loads_into_a_plain_timm_model(capsys, run_dir, classifier):
    weights = (run_dir / "model.safetensors").read_bytes()
    code, stdout, stderr = run_cli(capsys, "export", run_dir, "--format", "safetensors")
    assert code == 0, stderr
    out = run_dir / "model.export.safetensors"  # the default; the run's own file stays
    assert f"wrote {out} (safetensors)" in stdout
    assert (run_dir / "model.safetensors").read_bytes() == weights
    state, own = load_file(out), load_file(run_dir / "model.safetensors")
    assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k[:9] == "backbone."}
    plain = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    plain.load_state_dict(backbone, strict=True)
    images = sample_images(classifier, 4)
    with torch.no_grad():
        got = torch.nn.functional.linear(
            plain(images), state["head.0.weight"], state["head.0.bias"]
        )
    temperature = classifier.model.temperature  # the file holds the weights; metadata, T
    assert torch.allclose(got / temperature, logits(classifier, images), atol=1e-5)
    with safe_open(out, "pt") as opened:
        meta = opened.metadata()
    assert json.loads(meta["temperature"]) == temperature
    assert json.loads(meta["classes"]) == CLASSES and json.loads(meta["img_size"]) == 32
    assert meta["backbone"] == "timm:resnet10t" and meta["format"] == "pt"


def test_list_exporters_shows_the_three_with_their_descriptions(capsys):
    code, stdout, _ = run_cli(capsys, "list", "exporters")
    assert code == 0
    lines = " ".join(stdout.split())
    for factory in (exporters.onnx, exporters.torchscript, exporters.safetensors):
        assert f"{factory.__name__} {summary_of(factory)}" in lines
    assert "opset=None" in lines


def test_unknown_format_is_a_one_line_error_with_a_close_match(capsys, run_dir):
    code, stdout, stderr = run_cli(capsys, "export", run_dir, "--format", "onxx")
    assert code != 0 and not stdout
    assert len(stderr.strip().splitlines()) == 1
    assert "unknown export format 'onxx'; did you mean 'onnx'" in stderr


def test_existing_file_is_refused_and_left_as_it_was(capsys, run_dir, tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier export")
    code, _, stderr = run_cli(capsys, "export", run_dir, "--format", "torchscript", "--out", out)
    assert code != 0 and "exists; pass --overwrite" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_onnx_without_its_packages_says_what_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package does
    with pytest.raises(TlplugError, match=r"needs onnxruntime .*pip install 'tlplug\[onnx\]'"):
        export_run(run_dir, "onnx", out=tmp_path / "m.onnx", plugins=PluginHost(entrypoints=False))
    assert not list(tmp_path.iterdir())
