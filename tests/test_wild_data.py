"""Data as users collect it: broken files, odd image modes, stray files, skewed classes,
CSV manifests and test splits. Every case is a real file on disk."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tlplug, write_images
from tlplug import DataError, Engine, Recipe
from tlplug.data.folders import read_folder
from tlplug.data.images import open_rgb
from tlplug.data.loaders import EpochSampler, balanced_weights
from tlplug.data.manifest import read_manifest
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.train.loss import class_weights


def odd_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Write one image of every awkward kind; return the RGB each should read as."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 40), 77).save(folder / "gray.png")
    Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(folder / "gray16.png")
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(folder / "clear.png")
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.save(folder / "palette.gif")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGB", (600, 6), (0, 200, 0)).save(folder / "wide.png")
    Image.new("RGB", (6, 600), (0, 0, 200)).save(folder / "tall.bmp")
    Image.new("RGB", (40, 40), (90, 90, 90)).save(folder / "UPPER.TIFF")
    Image.new("RGB", (40, 40), (120, 60, 30)).save(folder / "web.webp", lossless=True)
    return {
        "gray.png": (77, 77, 77),
        "gray16.png": (128, 128, 128),
        "clear.png": (255, 255, 255),
        "palette.gif": (200, 10, 10),
        "cmyk.jpg": (255, 0, 0),
        "wide.png": (0, 200, 0),
        "tall.bmp": (0, 0, 200),
        "UPPER.TIFF": (90, 90, 90),
        "web.webp": (120, 60, 30),
    }


@pytest.fixture(scope="module")
def wild(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A train/val/test tree with every broken and odd case; returns it and the exact
    reasons expected for the files left out (by path relative to the root)."""
    root = tmp_path_factory.mktemp("wild")
    for split, count, seed in (("train", 10, 1), ("val", 3, 2), ("test", 3, 3)):
        for pattern in ("checker", "stripes"):
            write_images(root / split / pattern, pattern, count, seed, ".jpg")
    odd_images(root / "train" / "checker" / "odd")
    dots = root / "train" / "checker"
    good = (dots / "checker_0.jpg").read_bytes()
    (dots / "truncated.jpg").write_bytes(good[: len(good) * 3 // 4])  # header fine, data cut
    Image.open(dots / "truncated.jpg").close()  # the up-front check cannot catch it
    (dots / "empty.png").write_bytes(b"")
    (dots / "notes.jpg").write_text("this is not a picture")
    (dots / ".hidden.jpg").write_bytes(good)
    (dots / "README.txt").write_text("stray file")
    (root / "train" / ".thumbnails").mkdir()
    (root / "train" / ".thumbnails" / "x.jpg").write_bytes(good)
    (root / "train" / "broken-class").mkdir()
    (root / "train" / "broken-class" / "only.png").write_bytes(b"\x89PNG garbage")
    (root / "train" / "stray.jpg").write_bytes(good)  # a file next to the class folders
    expected = {
        "train/checker/empty.png": "empty file (0 bytes)",
        "train/checker/notes.jpg": "not an image PIL can read",
        "train/broken-class/only.png": "not an image PIL can read",
    }
    return root, expected


def test_every_odd_mode_reads_as_rgb_of_the_right_colour(tmp_path):
    colours = odd_images(tmp_path)
    for name, rgb in colours.items():
        image = open_rgb(tmp_path / name)
        assert image.mode == "RGB", name
        pixels = np.asarray(image)
        assert pixels.shape[:2] == (image.height, image.width)
        middle = tuple(int(v) for v in pixels[image.height // 2, image.width // 2])
        assert all(abs(a - b) <= 2 for a, b in zip(middle, rgb, strict=True)), (name, middle)


def test_the_folder_check_leaves_out_exactly_the_unreadable_files(wild):
    root, expected = wild
    splits = read_folder(root, None, 0)
    found = {str(Path(s.path).relative_to(root)): s.reason for s in splits.skipped}
    assert found == expected
    assert splits.classes == ("checker", "stripes")
    assert splits.warnings == (
        f"class folder {root / 'train' / 'broken-class'} left out: its 1 image file(s) "
        "could not be read",
    )
    names = {p.name for p in splits.train.paths}
    assert {"gray16.png", "cmyk.jpg", "UPPER.TIFF", "palette.gif", "truncated.jpg"} <= names
    assert not names & {".hidden.jpg", "README.txt", "x.jpg", "stray.jpg", "empty.png"}
    assert len(splits.test) == 6 and len(splits.val) == 6


def test_a_run_on_wild_data_completes_and_lists_every_skipped_file(wild, tmp_path, tiny):
    root, expected = wild
    engine = Engine.from_plugins(**{**tiny, "epochs": 1})
    result = engine.fit(root, out=tmp_path / "run", quiet=True)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    found = {str(Path(s["path"]).relative_to(root)): s["reason"] for s in summary["skipped_files"]}
    truncated = found.pop("train/checker/truncated.jpg")
    assert found == expected
    assert truncated.startswith("cannot be decoded (image file is truncated")
    assert set(summary["per_class_val_acc"]) == {"checker", "stripes"}
    assert summary["num_test"] == 6 and 0 <= summary["test_acc"] <= 1
    assert set(summary["per_class_test_acc"]) == {"checker", "stripes"}
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["resolved"]["data"]["num_skipped"] == 3
    assert not list(result.run_dir.glob(".decode-failures"))


def test_console_reports_counts_skips_and_left_out_classes(wild, tmp_path, capsys):
    root, _ = wild
    code, out, err = tlplug(
        capsys,
        "run",
        "--data",
        str(root),
        "--backbone",
        "timm:resnet10t",
        "--no-pretrained",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0, err
    assert "per class (train/val): checker 20/3, stripes 10/3" in out
    assert "warning: skipped 3 file(s) that are not readable images" in out
    assert "broken-class left out" in out
    assert "more image(s) failed to decode while training" in out
    assert "test_acc" in out


def test_val_class_unknown_to_train_and_single_class_are_clear_errors(tmp_path):
    write_images(tmp_path / "a" / "train" / "checker", "checker", 3, 1)
    write_images(tmp_path / "a" / "train" / "dots", "dots", 3, 1)
    write_images(tmp_path / "a" / "test" / "rings", "rings", 2, 1)
    with pytest.raises(DataError, match="rings in .* every test class needs training images"):
        read_folder(tmp_path / "a", None, 0)
    write_images(tmp_path / "b" / "checker", "checker", 3, 1)
    (tmp_path / "b" / "dots").mkdir()
    with pytest.raises(DataError, match="need at least 2 classes, found 1"):
        read_folder(tmp_path / "b", None, 0)


def write_manifest(root: Path, with_split: bool) -> Path:
    write_images(root / "imgs", "checker", 8, 1)
    write_images(root / "imgs", "dots", 8, 1)
    rows = ["path,label" + (",split" if with_split else "")]
    for i in range(8):
        for pattern in ("checker", "dots"):
            split = ",val" if with_split and i >= 6 else ",train" if with_split else ""
            rows.append(f"imgs/{pattern}_{i}.png,{pattern}{split}")
    rows.append("imgs/missing.png,dots" + (",train" if with_split else ""))
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def test_csv_manifest_with_splits_and_skips(tmp_path, tiny):
    manifest = write_manifest(tmp_path, with_split=True)
    splits = read_manifest(manifest, None, 0)
    assert splits.classes == ("checker", "dots")
    assert (len(splits.train), len(splits.val)) == (12, 4)
    assert [(Path(s.path).name, s.reason) for s in splits.skipped] == [
        ("missing.png", "file not found")
    ]
    # A .csv path picks the csv source; a run trains from it.
    engine = Engine.from_plugins(**{**tiny, "epochs": 1})
    result = engine.fit(manifest, out=tmp_path / "r", quiet=True)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["resolved"]["data"]["source"] == "csv"
    assert config["resolved"]["data"]["layout"] == "manifest splits"


def test_csv_without_split_column_is_split_reproducibly(tmp_path):
    manifest = write_manifest(tmp_path, with_split=False)
    a, b = read_manifest(manifest, 0.25, 7), read_manifest(manifest, 0.25, 7)
    c = read_manifest(manifest, 0.25, 8)
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert a.info["val_files_sha256"] == b.info["val_files_sha256"]
    assert a.info["val_files_sha256"] != c.info["val_files_sha256"]
    assert Counter(a.val.labels) == {0: 2, 1: 2}


def test_data_source_is_picked_by_prefix_or_path(tmp_path, class_folders):
    plugins = PluginHost(entrypoints=False)
    splits = load_data(plugins, f"folder:{class_folders}", Recipe(val_split=0.5))
    assert splits.info["source"] == "folder" and splits.info["val_split"] == 0.5
    assert load_data(plugins, "synthetic:", Recipe()).info["source"] == "synthetic"
    with pytest.raises(DataError, match="does not exist"):
        load_data(plugins, tmp_path / "nowhere", Recipe())


def test_balance_sampler_draws_classes_equally_and_loss_weights_even_them():
    labels = [0] * 90 + [1] * 10
    sampler = EpochSampler(len(labels), seed=0, shuffle=True, weights=balanced_weights(labels))
    sampler.set_epoch(1)
    drawn = Counter(labels[i] for _ in range(20) for i, _ in sampler)
    assert abs(drawn[0] / sum(drawn.values()) - 0.5) < 0.03
    weights = class_weights(labels, 2)
    assert torch.allclose(weights * torch.tensor([90.0, 10.0]), torch.tensor([50.0, 50.0]))


def test_balance_is_recorded_and_trains(tmp_path, tiny, image_folder):
    skewed = tmp_path / "skewed"
    shutil.copytree(image_folder, skewed)
    for path in sorted((skewed / "train" / "dots").iterdir())[2:]:
        path.unlink()
    for balance in ("sampler", "loss"):
        engine = Engine.from_plugins(**{**tiny, "epochs": 1}, balance=balance)
        result = engine.fit(skewed, out=tmp_path / balance, quiet=True)
        config = json.loads((result.run_dir / "config.json").read_text())
        assert config["recipe"]["balance"] == balance


def test_num_train_counts_the_images_trained_on(tmp_path, image_folder, tiny):
    """A training image that fails to decode while training is replaced by another of its
    class; summary.json's num_train leaves it out, config.json's lists what was found."""
    import json
    import shutil

    shutil.copytree(image_folder, tmp_path / "d")
    good = next((tmp_path / "d" / "train" / "dots").iterdir()).read_bytes()
    (tmp_path / "d" / "train" / "dots" / "broken.jpg").write_bytes(good[: len(good) * 3 // 4])
    Engine.from_plugins(entrypoints=False, **(tiny | {"epochs": 1})).fit(
        tmp_path / "d", out=tmp_path / "r", quiet=True
    )
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert config["resolved"]["data"]["num_train"] == 37
    assert summary["num_train"] == 36 and len(summary["skipped_files"]) == 1
