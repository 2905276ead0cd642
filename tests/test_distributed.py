"""Data-parallel runs under torchrun (gloo on CPU, two real processes): the same results as
one process, rank 0 alone writing, a killed process stopping the others and the run
resuming in another number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import epochs_of, final_model, wait_for_epochs
from tlplug.data.loaders import EpochSampler

ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# fp32 and frozen BatchNorm statistics: what makes two processes compute what one does, to
# float tolerance (bf16 kernels and per-process batch statistics depend on the batch size).
SAME = ["--precision", "fp32", "--bn-policy", "eval", "--no-plots", "--quiet"]
COMMON = [
    "--backbone",
    "timm:resnet10t",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--workers",
    "0",
]


def tlplug_cli(*args, processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``tlplug ARGS`` in one process, or under ``torchrun --standalone`` in several."""
    if processes == 1:
        command = [sys.executable, "-m", "tlplug", *map(str, args)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "tlplug",
            *map(str, args),
        ]
    done = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_args(data: Path, weights: Path, *more) -> list:
    """``tlplug run`` on ``data`` from ``weights`` with the tiny settings, then ``more``."""
    return ["run", "--data", data, *COMMON, "--weights", weights, *more]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source_weights(image_folder, tmp_path_factory) -> Path:
    """Weights trained on the task first, as pretrained weights would be: a network from
    random weights is too ill-conditioned for a float-tolerance comparison to mean much."""
    out = tmp_path_factory.mktemp("source") / "run"
    tlplug_cli(
        "run",
        "--data",
        image_folder,
        *COMMON,
        "--no-pretrained",
        "--schedule",
        "full",
        "--epochs",
        "3",
        "--no-plots",
        "--quiet",
        "--out",
        out,
    )
    return out / "model.safetensors"


def test_each_process_gets_its_share_of_the_same_global_batches():
    one = EpochSampler(37, seed=3, shuffle=True)
    one.set_epoch(2)
    batches = [list(one)[i : i + 8] for i in range(0, 32, 8)]  # drop_last: 4 batches
    shares = []
    for rank in range(2):
        sampler = EpochSampler(37, seed=3, shuffle=True)
        sampler.shard(rank, 2, 8)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(sampler) == 16
    for index, batch in enumerate(batches):
        assert shares[0][index * 4 : index * 4 + 4] + shares[1][index * 4 : index * 4 + 4] == batch


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "probe", "taught"),
    [
        ("full", "converge", False),
        ("gradual", "converge", False),
        ("freeze-unfreeze", "converge", False),
        ("linear-probe", "converge", False),
        ("linear-probe", "epochs", False),  # the head steps on cached features, each its share
        ("lp-ft", "converge", False),
        ("bitfit", "converge", False),
        ("freeze-unfreeze", "converge", True),  # teacher logits cached in parts, then live
    ],
)
def test_two_processes_train_as_one(
    schedule, probe, taught, image_folder, source_weights, tmp_path
):
    args = run_args(
        image_folder,
        source_weights,
        "--schedule",
        schedule,
        "--probe",
        probe,
        "--epochs",
        "3",
        "--keep-state",
        *SAME,
        *(["--teacher", source_weights.parent] if taught else []),
    )
    tlplug_cli(*args, "--out", tmp_path / "one")
    tlplug_cli(*args, "--out", tmp_path / "two", processes=2)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["val_acc"] for r in two] == [r["val_acc"] for r in one]
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    assert summaries[1]["confusion_matrix"] == summaries[0]["confusion_matrix"]  # each image once
    for a, b in zip(one, two, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4, abs=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
    source = load_file(source_weights)
    final = [final_model(tmp_path / d) for d in ("one", "two")]
    untouched = {
        k for k, v in final[0].items() if k[6:] in source and torch.equal(v, source[k[6:]])
    }
    if schedule != "full":
        assert untouched  # the stem never trains in these schedules
    for key, value in final[0].items():
        if key in untouched:  # frozen in one process: bit-identical in two
            assert torch.equal(final[1][key], value), key
        else:
            torch.testing.assert_close(final[1][key], value, rtol=1e-4, atol=1e-5)
    config = json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]
    assert (config["batch_size"], config["processes"], config["batch_per_process"]) == (8, 2, 4)


@pytest.mark.slow
def test_batched_augmentation_trains_as_one_in_two_processes(
    image_folder, source_weights, tmp_path
):
    augment = ["--augment", "crop", "--augment", "flip", "--augment", "color-jitter"]
    args = run_args(
        image_folder,
        source_weights,
        "--schedule",
        "full",
        "--epochs",
        "2",
        *augment,
        "--augment-path",
        "batched",
        *SAME,
    )
    tlplug_cli(*args, "--out", tmp_path / "one")
    tlplug_cli(*args, "--out", tmp_path / "two", processes=2)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    for a, b in zip(one, two, strict=True):  # each image drew the same crop, flip and colours
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4, abs=1e-6)
    config = json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]
    assert config["augmentation"]["path"] == "batched"


@pytest.mark.slow
def test_rank_zero_alone_prints_and_writes(image_folder, source_weights, tmp_path):
    args = run_args(
        image_folder,
        source_weights,
        "--epochs",
        "2",
        "--no-plots",
        "--workers",
        "1",
    )
    tlplug_cli(*args, "--out", tmp_path / "one")
    two = tlplug_cli(*args, "--nproc", "2", "--out", tmp_path / "two")
    assert two.stdout.count("tlplug 0.1.0:") == 1 and two.stdout.count("epoch 2/2") == 1
    assert "2 processes (cpu, 4 images each a step)" in two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )  # no decoded-image file, log or checkpoint of another process
    assert epochs_of(tmp_path / "two") == [1, 2]


def _rank_pid(rank: int, run_dir: Path) -> int | None:
    """The process id of the given rank of the run writing ``run_dir`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ and str(run_dir).encode() in command:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_process_stops_the_run_which_resumes_in_one_process(
    image_folder, source_weights, tmp_path
):
    args = run_args(
        image_folder,
        source_weights,
        "--schedule",
        "full",
        "--epochs",
        "4",
        "--keep-state",
        *SAME,
    )
    tlplug_cli(*args, "--out", tmp_path / "whole")
    run_dir = tmp_path / "cut"
    command = [sys.executable, "-m", "tlplug", *map(str, args), "--nproc", "2", "--out", run_dir]
    launched = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )
    wait_for_epochs(run_dir, 1, launched)
    os.kill(_rank_pid(1, run_dir), signal.SIGKILL)
    started = time.monotonic()
    _, err = launched.communicate(timeout=120)
    assert launched.returncode == 1 and time.monotonic() - started < 90
    assert err.strip().splitlines()[-1].startswith("Error: process rank 1 of 2 failed")
    assert "Traceback" not in err
    resumed = tlplug_cli("resume", run_dir, "--quiet")
    assert resumed.returncode == 0
    assert epochs_of(run_dir) == [1, 2, 3, 4]
    assert [r["val_acc"] for r in records(run_dir)] == [
        r["val_acc"] for r in records(tmp_path / "whole")
    ]
    cut = final_model(run_dir)
    for key, value in final_model(tmp_path / "whole").items():
        torch.testing.assert_close(cut[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_statistics_recomputed_in_parts_pool_to_those_of_one_process(
    image_folder, source_weights, tmp_path
):
    # BatchNorm in training mode, weights kept still (a vanishing LR): what differs between
    # the runs is only how each epoch's statistics are recomputed (PreciseBN), here by two
    # processes each over its part of the batches, pooled.
    args = run_args(
        image_folder,
        source_weights,
        "--schedule",
        "full",
        "--epochs",
        "2",
        "--keep-state",
        "--precision",
        "fp32",
        "--bn-policy",
        "train",
        "--lr",
        "1e-12",
        "--no-plots",
        "--quiet",
    )
    tlplug_cli(*args, "--out", tmp_path / "one")
    tlplug_cli(*args, "--out", tmp_path / "two", processes=2)
    assert [r["norm_stats_images"] for r in records(tmp_path / "two")] == [
        r["norm_stats_images"] for r in records(tmp_path / "one")
    ]
    one, two = (final_model(tmp_path / d) for d in ("one", "two"))
    source = load_file(source_weights)
    stats = [k for k in one if k.endswith(("running_mean", "running_var"))]
    assert stats and not all(torch.equal(one[k], source[k[6:]]) for k in stats)  # recomputed
    for key in stats:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
