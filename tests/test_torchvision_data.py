"""torchvision's data sets as a data source (``--data torchvision:NAME:ROOT``), read by
torchvision itself from files the tests write in each set's own format: DTD (JPEG files
and split lists: its own train/val/test) and MNIST (idx binaries: grayscale arrays in
memory, no validation split of its own)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import tlplug, write_images
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.recipe import Recipe

ARGS = ["--backbone", "timm:resnet10t", "--no-pretrained", "--img-size", "32"]
ARGS += ["--batch-size", "8", "--workers", "0", "--no-plots", "--quiet"]


@pytest.fixture(scope="module")
def dtd_root(tmp_path_factory) -> Path:
    """DTD's layout: dtd/dtd/images/<class>/*.jpg and labels/{train,val,test}1.txt."""
    root = tmp_path_factory.mktemp("tv")
    base = root / "dtd" / "dtd"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for pattern in ("checker", "dots", "stripes"):
        write_images(base / "images" / pattern, pattern, 10, seed=1, suffix=".jpg")
        for index in range(10):
            part = "train" if index < 6 else "val" if index < 8 else "test"
            lists[part].append(f"{pattern}/{pattern}_{index}.jpg")
    (base / "labels").mkdir()
    for part, lines in lists.items():
        (base / "labels" / f"{part}1.txt").write_text("\n".join(lines) + "\n")
    return root


def write_mnist(root: Path, per_class: int) -> None:
    """MNIST's raw idx files: digit d is a bright bar at row 2d + 4 on noise."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", per_class), ("t10k", 2)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), count)
        images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[2 * label + 4 : 2 * label + 7] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.tobytes()
        )


def test_dtd_keeps_its_own_splits(dtd_root):
    splits = load_data(PluginHost(), f"torchvision:DTD:{dtd_root}", Recipe())
    assert splits.classes == ("checker", "dots", "stripes")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    assert splits.info["layout"] == "own splits" and splits.info["source"] == "torchvision"
    assert splits.train.load(0).mode == "RGB"


def test_mnist_arrays_hold_out_a_validation_split(tmp_path):
    write_mnist(tmp_path, per_class=5)
    splits = load_data(PluginHost(), f"torchvision:MNIST:{tmp_path}", Recipe(val_split=0.2))
    assert len(splits.classes) == 10 and splits.classes[3] == "3 - three"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    assert sorted(splits.val.labels) == list(range(10))  # one of each class held out
    image = splits.train.load(0)
    assert image.mode == "RGB" and image.size == (28, 28)


def test_a_torchvision_run_trains_resumes_and_evaluates(dtd_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    data = f"torchvision:DTD:{dtd_root}"
    code, _, err = tlplug(capsys, "run", "--data", data, *ARGS, "--epochs", "1", "--out", run_dir)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["data"]["location"] == f"DTD:{dtd_root}"
    code, _, err = tlplug(capsys, "resume", run_dir, "--epochs", "2", "--quiet")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_test"] == 6
    code, out, err = tlplug(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(summary["best_val_acc"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("torchvision:CIFAR10:{root}", "add --data-opt download=true to download it"),
        ("torchvision:NoSuchSet:{root}", "torchvision has no data set 'NoSuchSet'"),
        ("torchvision:CIFAR10", "names no data set and folder"),
    ],
)
def test_a_set_that_cannot_be_read_is_one_line(data, message, tmp_path, capsys):
    code, _, err = tlplug(capsys, "run", "--data", data.format(root=tmp_path), *ARGS)
    assert code == 1 and err.count("\n") == 1 and message in err
    assert not any(tmp_path.iterdir())  # nothing downloaded


def test_downloading_is_an_option_of_the_source(capsys):
    code, out, _ = tlplug(capsys, "list", "data-sources")
    assert code == 0 and "torchvision" in out and "download=False (bool)" in out
