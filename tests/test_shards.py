"""Tar shards in the WebDataset layout: ``tlplug shard`` writes them from any source, and
``--data`` reads a folder of them or a brace pattern, with corrupt samples left out and
listed, each sample once an epoch across processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import tlplug
from tlplug.data.loaders import EpochSampler, TransformedImages
from tlplug.data.shards import expand
from tlplug.data.transforms import base_transform
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data
from tlplug.recipe import Recipe

ARGS = ["--backbone", "timm:resnet10t", "--no-pretrained", "--img-size", "32"]
ARGS += ["--batch-size", "8", "--workers", "0", "--no-plots", "--quiet"]


@pytest.fixture(scope="module")
def shards(image_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "set"
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlplug",
            "shard",
            str(image_folder),
            "--out",
            str(out),
            "--shard-size",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 0, code.stderr
    return out


def test_shard_writes_every_split_in_the_webdataset_layout(shards, image_folder):
    assert sorted(p.name for p in shards.iterdir()) == [
        "classes.txt",
        "train-00000.tar",
        "train-00001.tar",
        "train-00002.tar",
        "train-00003.tar",
        "val-00000.tar",
        "val-00001.tar",
    ]
    with tarfile.open(shards / "train-00000.tar") as tar:
        names = tar.getnames()
        assert names[0].startswith("00000000.") and names[1] == "00000000.cls"
        first = tar.extractfile(names[0]).read()
    assert first == sorted((image_folder / "train" / "checker").iterdir())[0].read_bytes()
    splits = load_data(PluginHost(), str(shards), Recipe())
    assert splits.classes == ("checker", "dots", "stripes")
    assert (len(splits.train), len(splits.val)) == (36, 12)
    assert splits.info["source"] == "shards" and splits.info["shards"] == {"train": 4, "val": 2}


def test_a_brace_pattern_reads_those_shards_and_holds_out_validation(shards):
    pattern = str(shards / "train-{00000..00002}.tar")
    assert expand(pattern)[-1].endswith("train-00002.tar")
    splits = load_data(PluginHost(), pattern, Recipe(val_split=0.25))
    assert len(splits.train) + len(splits.val) == 30 and splits.info["layout"] == "split"


def test_a_run_on_shards_trains_resumes_and_evaluates(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = tlplug(capsys, "run", "--data", shards, *ARGS, "--epochs", "1", "--out", run_dir)
    assert code == 0, err
    code, _, err = tlplug(capsys, "resume", run_dir, "--epochs", "2", "--quiet")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    code, out, err = tlplug(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(summary["best_val_acc"])


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_are_left_out_and_listed(shards, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in shards.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    with tarfile.open(broken / "train-00004.tar", "w") as tar:
        _member(tar, "bad.jpg", b"not a jpeg at all")  # decodes badly: replaced, listed
        _member(tar, "bad.cls", b"0")
        _member(tar, "nolabel.jpg", (shards / "classes.txt").read_bytes())  # no .cls: left out
    run_dir = tmp_path / "run"
    code, _, err = tlplug(capsys, "run", "--data", broken, *ARGS, "--epochs", "1", "--out", run_dir)
    assert code == 0, err
    skipped = json.loads((run_dir / "summary.json").read_text())["skipped_files"]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert reasons["train-00004.tar:nolabel"] == "no .cls label member"
    assert reasons["train-00004.tar:bad.jpg"].startswith("cannot be decoded")


def test_two_processes_see_each_sample_once_an_epoch(shards):
    splits = load_data(PluginHost(), str(shards), Recipe())
    seen = []
    for rank in range(2):
        sampler = EpochSampler(len(splits.train), seed=0, shuffle=True)
        sampler.shard(rank, 2, 12)
        sampler.set_epoch(3)
        seen += [splits.train.members[index] for index, _ in sampler]
    assert len(seen) == len(set(seen)) == 36  # 3 global batches of 12, none twice


def test_a_loader_with_two_workers_reads_every_sample_once_an_epoch(shards):
    splits = load_data(PluginHost(), str(shards), Recipe())
    dataset = TransformedImages(splits.train, base_transform(DataConfig(), 16), None)
    alone = [dataset[index][0] for index in range(len(dataset))]  # read in this process
    sampler = EpochSampler(len(dataset), seed=0, shuffle=True)
    loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=2)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        order = [index for index, _ in sampler]
        read = [image for images, _ in loader for image in images]
        assert sorted(order) == list(range(len(dataset))) == list(range(36))
        assert len(read) == len(order)
        assert all(torch.equal(image, alone[at]) for image, at in zip(read, order, strict=True))


@pytest.mark.slow
def test_a_two_process_run_on_a_shard_pattern(shards, tmp_path):
    pattern = str(shards / "train-{00000..00003}.tar")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlplug",
            "run",
            "--data",
            pattern,
            *ARGS,
            "--epochs",
            "1",
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert config["processes"] == 2 and config["data"]["source"] == "shards"
