"""Data-parallel throughput: 1 against N processes, tlplug against a plain DDP loop.

On the same 600 + 160 synthetic images and the same stand-in pretrained resnet18 weights
(64 px, global batch 32), one after the other:

- tlplug with default flags (``tlplug run --nproc N``: the default schedule, precision
  and caches), then ``--schedule full --precision fp32``;
- the plain loop of the articles made data-parallel as the PyTorch tutorial does it
  (``torchrun``, ``DistributedSampler``, ``DistributedDataParallel`` over the whole model,
  fp32, every image decoded every epoch, per-process batch 32 / N).

Each row is the images/s of the training epochs after the first (the mean over processes
of a whole pass: every process's share counted), and the wall time of the command,
start-up and process launch included. On a machine with few cores, N processes share
them: the ratio then measures overhead, not speed-up. ``--device cuda --nproc N`` on a
GPU machine gives the scaling (``bench/gpu.py --nproc N`` does it at 224 px).

    python bench/distributed.py [--nproc 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from common import BATCH, IMG_SIZE, plain_loaders, plain_model, pretrain, write_images
from torch import nn


def plain_worker(data: Path, weights: Path, epochs: int, device: str, out: Path) -> None:
    """One process of the plain DDP loop; rank 0 writes each epoch's images/s to ``out``."""
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    where = torch.device(device, int(os.environ["LOCAL_RANK"])) if device == "cuda" else None
    model = plain_model(weights, 5).to(where or "cpu")
    model = nn.parallel.DistributedDataParallel(model, device_ids=[where] if where else None)
    train, _ = plain_loaders(data)
    sampler = torch.utils.data.DistributedSampler(train.dataset, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(
        train.dataset, batch_size=BATCH // world, sampler=sampler, drop_last=True
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(where or "cpu"), labels.to(where or "cpu")
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
            seen += len(labels)
        rates.append(seen * world / (time.perf_counter() - start))
    if rank == 0:
        out.write_text(json.dumps(rates))
    dist.destroy_process_group()


def run_plain(data: Path, weights: Path, args, nproc: int, folder: Path) -> tuple[float, float]:
    out = folder / f"plain-{nproc}.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        __file__,
        "--plain-worker",
        str(data),
        str(weights),
        str(out),
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_env(nproc))
    seconds = time.perf_counter() - started
    rates = json.loads(out.read_text())
    return _mean(rates[1:] or rates), seconds


def run_tlplug(
    data: Path, weights: Path, args, nproc: int, folder: Path, tuned: list[str]
) -> tuple[float, float]:
    out = folder / f"tlplug-{nproc}-{len(tuned)}"
    command = [
        sys.executable,
        "-m",
        "tlplug",
        "run",
        "--data",
        str(data),
        "--backbone",
        "timm:resnet18",
        "--weights",
        str(weights),
        "--img-size",
        str(IMG_SIZE),
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        "--no-plots",
        "--quiet",
        "--nproc",
        str(nproc),
        "--out",
        str(out),
        *tuned,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_env(nproc))
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return _mean([r["images_per_s"] for r in records[1:] or records]), seconds


def _env(nproc: int) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // nproc)  # the cores shared by the processes
    return os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).parent)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plain-worker", nargs=3, metavar=("DATA", "WEIGHTS", "OUT"))
    args = parser.parse_args()
    if args.plain_worker:
        data, weights, out = map(Path, args.plain_worker)
        plain_worker(data, weights, args.epochs, args.device, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, weights = write_images(folder / "data"), pretrain(folder)
        rows = []
        for name, run in (
            ("tlplug, default flags", lambda n: run_tlplug(data, weights, args, n, folder, [])),
            (
                "tlplug --schedule full --precision fp32",
                lambda n: run_tlplug(
                    data, weights, args, n, folder, ["--schedule", "full", "--precision", "fp32"]
                ),
            ),
            ("plain DDP loop, full, fp32", lambda n: run_plain(data, weights, args, n, folder)),
        ):
            one, many = run(1), run(args.nproc)
            rows.append((name, one, many))
    cores = os.cpu_count()
    print(f"images/s of training epochs 2..{args.epochs} (wall s), {cores} cores, {args.device}")
    for name, (rate1, wall1), (rate_n, wall_n) in rows:
        print(
            f"  {name:<42} 1 process {rate1:7.1f} img/s ({wall1:5.1f}s)  {args.nproc} processes "
            f"{rate_n:7.1f} img/s ({wall_n:5.1f}s)  ratio {rate_n / rate1:4.2f}x"
        )
    plain, full = rows[2], rows[1]
    print(
        f"  tlplug full fp32 / plain DDP at {args.nproc} processes: "
        f"{full[2][0] / plain[2][0]:4.2f}x images/s"
    )


if __name__ == "__main__":
    main()
