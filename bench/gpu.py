"""GPU throughput, ResNet-50 at 224 px, bf16, channels-last: tlplug against the plain loop.

Writes a folder of JPEGs (``--images`` training images at 256 px, an eighth as many for
validation), then, one after the other in this process, on the same data and weights:

- full fine-tune with a random resized crop and a flip: the plain loop (ImageFolder, PIL,
  torchvision's per-image RandomResizedCrop and RandomHorizontalFlip, a DataLoader with
  workers and pinned memory, bf16 autocast, channels-last, SGD) and tlplug ``--schedule
  full --precision bf16 --augment crop --augment flip``; images/s over the epochs after the
  first (tlplug decodes each image once, in the first epoch, feeds the GPU uint8 pixels
  and crops and flips them there, batched: ``--augment-path auto``);
- feature extraction: the plain loop's backbone over the loader under inference mode, and
  tlplug's feature cache (a schedule that trains everything for an epoch, so images are
  decoded, then only the head: ``cache_images_per_s`` of the second epoch).

Goals on one H100: >= 5,000 img/s full fine-tune, >= 20,000 img/s feature extraction.

With ``--nproc N`` (N GPUs), the full fine-tune also runs as ``tlplug run --nproc N``
(data parallel, ``--batch-size`` per GPU, so the global batch is N times larger) and the
scaling over one process is printed.

    python bench/gpu.py [--images 8192] [--epochs 3] [--batch-size 256] [--nproc N]
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

import timm
import torch
from PIL import Image
from torch import nn
from torchvision import datasets, transforms

from tlplug import Engine, Stage, hookimpl
from tlplug.data.synthetic import CLASSES, draw


class WarmThenProbe:
    """A schedule plugin: everything trains for one epoch, then only the head."""

    name = "bench-warm-then-probe"

    @hookimpl
    def tlplug_register_schedules(self, register):
        register(
            "warm-then-probe",
            lambda groups, epochs: [Stage(0, tuple(groups)), Stage(1, (groups[-1],))],
        )


def write_folder(root: Path, train: int, size: int = 256) -> Path:
    """``train`` JPEGs (and an eighth as many for validation) of the synthetic classes."""
    import random

    rng = random.Random(0)
    for split, count in (("train", train), ("val", max(len(CLASSES), train // 8))):
        for index in range(count):
            pattern = CLASSES[index % len(CLASSES)]
            folder = root / split / pattern
            folder.mkdir(parents=True, exist_ok=True)
            image = draw(pattern, rng).resize((size, size), Image.BILINEAR)
            image.save(folder / f"{index:05d}.jpg", quality=90)
    return root


def plain_loader(
    root: Path, batch_size: int, workers: int, augment: bool = False
) -> torch.utils.data.DataLoader:
    """The plain loader: with ``augment`` a random resized crop and a flip per image, else
    resize and center crop."""
    if augment:
        sized = [
            transforms.RandomResizedCrop(224, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        sized = [transforms.Resize(256), transforms.CenterCrop(224)]
    transform = transforms.Compose(
        [
            *sized,
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(root / "train", transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=True,
        persistent_workers=workers > 0,
        drop_last=True,
    )


def plain_full(root: Path, args, device: torch.device) -> float:
    """Images/s of the plain loop's full fine-tune over epochs 2..E."""
    model = timm.create_model(args.model, num_classes=len(CLASSES)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = plain_loader(root, args.batch_size, args.workers, augment=True)
    loss_fn = nn.CrossEntropyLoss()
    seen, seconds = 0, 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        count = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += len(labels)
        _sync(device)
        if epoch > 0:
            seen, seconds = seen + count, seconds + time.perf_counter() - start
    return seen / seconds


@torch.inference_mode()
def plain_features(root: Path, args, device: torch.device) -> float:
    """Images/s of the plain loop's backbone over the training images (second pass)."""
    model = timm.create_model(args.model, num_classes=0).to(device)
    model = model.to(memory_format=torch.channels_last).eval()
    loader = plain_loader(root, args.batch_size, args.workers)
    rate = 0.0
    for _ in range(2):  # the first pass starts the workers
        start, count = time.perf_counter(), 0
        for images, _labels in loader:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            with torch.autocast(device.type, dtype=torch.bfloat16):
                model(images)
            count += len(images)
        _sync(device)
        rate = count / (time.perf_counter() - start)
    return rate


def tlplug_records(
    root: Path, out: Path, args, schedule: str, epochs: int, augment: tuple[str, ...] = ()
) -> list[dict]:
    """Train with tlplug; return its metrics.jsonl records."""
    Engine.from_plugins(
        WarmThenProbe(),
        backbone=f"timm:{args.model}",
        pretrained=False,
        schedule=schedule,
        epochs=epochs,
        precision="bf16",
        batch_size=args.batch_size,
        img_size=224,
        augment=augment,
        optimizer="sgd",
        lr=0.01,
        lr_schedule="constant",
        workers=args.workers,
        device=args.device,
        val_every=epochs,
    ).fit(root, out=out, overwrite=True, quiet=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def tlplug_parallel_records(root: Path, out: Path, args) -> list[dict]:
    """The full fine-tune of :func:`tlplug_records` in ``args.nproc`` processes, through
    the command line as a user launches it; its metrics.jsonl records."""
    command = [
        sys.executable,
        "-m",
        "tlplug",
        "run",
        "--data",
        str(root),
        "--out",
        str(out),
        "--nproc",
        str(args.nproc),
        "--backbone",
        f"timm:{args.model}",
        "--no-pretrained",
        "--schedule",
        "full",
        "--epochs",
        str(args.epochs),
        "--precision",
        "bf16",
        "--batch-size",
        str(args.batch_size * args.nproc),
        "--img-size",
        "224",
        "--augment",
        "crop",
        "--augment",
        "flip",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--lr-schedule",
        "constant",
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--val-every",
        str(args.epochs),
        "--quiet",
        "--no-plots",
    ]
    subprocess.run(command, check=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--nproc", type=int, default=1, help="also train in N processes")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "data", args.images)
        trained = tlplug_records(
            root, Path(tmp) / "full", args, "full", args.epochs, augment=("crop", "flip")
        )
        config = json.loads((Path(tmp) / "full" / "config.json").read_text())
        path = config["resolved"]["augmentation"]
        full = {"plain loop": plain_full(root, args, device), "tlplug": _mean_rate(trained)}
        probe = tlplug_records(root, Path(tmp) / "probe", args, "warm-then-probe", 2)
        features = {
            "plain loop": plain_features(root, args, device),
            "tlplug": probe[1]["cache_images_per_s"],
        }
        if args.nproc > 1:
            parallel = _mean_rate(tlplug_parallel_records(root, Path(tmp) / "ddp", args))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model} 224 px, bf16, channels-last, batch {args.batch_size}, {name}")
    print(f"  tlplug's crop and flip: {path['path']} ({path['why']})")
    for what, rates, goal in (
        ("full fine-tune", full, 5000),
        ("feature extraction", features, 20000),
    ):
        ratio = rates["tlplug"] / rates["plain loop"]
        print(
            f"  {what:<19} plain {rates['plain loop']:8.0f} img/s  tlplug "
            f"{rates['tlplug']:8.0f} img/s  {ratio:4.2f}x  (goal on one H100: >= {goal:,})"
        )
    if args.nproc > 1:
        print(
            f"  full fine-tune, tlplug in {args.nproc} processes: {parallel:8.0f} img/s, "
            f"{parallel / full['tlplug']:4.2f}x one process (ideal {args.nproc}x)"
        )


def _mean_rate(records: list[dict]) -> float:
    """Images/s over the epochs after the first, from tlplug's per-epoch records."""
    later = records[1:] or records
    return sum(r["images_per_s"] for r in later) / len(later)


if __name__ == "__main__":
    main()
