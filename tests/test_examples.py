"""Smoke tests: each example of examples/ runs at tiny size with --no-pretrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--no-pretrained", "--img-size", "32", "--batch-size", "8", "--workers", "0"]


def run(command: list[str], data: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATA": str(data),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(command, capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    ("script", "extra", "trainable"),
    [
        (
            "000_resnet50_fc_then_layer4.sh",
            ["--epochs", "2", "--schedule-opt", "at=1"],
            [["head"], ["layer4", "head"]],
        ),
        (
            "001_resnet18_cifar32.sh",
            ["--epochs", "1"],
            [["stem", "layer1", "layer2", "layer3", "layer4", "head"]],
        ),
    ],
)
@pytest.mark.slow
def test_shell_examples(script, extra, trainable, image_folder, tmp_path):
    result = run(
        ["sh", str(EXAMPLES / script), *TINY, *extra, "--out", str(tmp_path)], image_folder
    )
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [m["trainable_groups"] for m in metrics] == trainable


@pytest.mark.slow
def test_vgg16_mlp_example(image_folder, tmp_path):
    result = run(
        [
            sys.executable,
            str(EXAMPLES / "002_vgg16_mlp_adam.py"),
            "--data",
            str(image_folder),
            "--no-pretrained",
            "--epochs",
            "1",
            "--img-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--out",
            str(tmp_path),
        ],
        image_folder,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resolved"]["backbone"]["num_features"] == 25088
    assert [g["name"] for g in config["resolved"]["groups"]][-1] == "head"
    assert config["recipe"]["head_opts"] == {
        "hidden": [4096, 4096],
        "dropout": 0.5,
        "activation": "relu",
    }
