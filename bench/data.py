"""Loader throughput by data source: images/s of tlplug's training loader (decode, default
augmentation, normalization) over a folder of JPEGs, the same images as tar shards
(``tlplug shard``), as a Hugging Face ``save_to_disk`` set, and with decode-once (the
pixels kept after the first pass), against a plain torchvision ``ImageFolder`` loader.

    python bench/data.py [--images 2000] [--size 256] [--img-size 160] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets, transforms

from tlplug.data.decoded import keep_decoded
from tlplug.data.loaders import make_loaders
from tlplug.data.pipeline import build_pipeline
from tlplug.data.synthetic import CLASSES, draw
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import load_data, resolve
from tlplug.recipe import Recipe


def write_folder(root: Path, count: int, size: int) -> Path:
    rng = random.Random(0)
    for index in range(count):
        pattern = CLASSES[index % len(CLASSES)]
        folder = root / "train" / pattern
        folder.mkdir(parents=True, exist_ok=True)
        image = draw(pattern, rng).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{index:05d}.jpg", quality=90)
    for pattern in CLASSES:  # a token validation split: the bench reads the training loader
        (root / "val" / pattern).mkdir(parents=True, exist_ok=True)
        draw(pattern, rng).save(root / "val" / pattern / "0.jpg")
    return root


def write_hf(folder: Path, out: Path) -> Path | None:
    try:
        import datasets
    except ImportError:
        return None
    classes = sorted(p.name for p in (folder / "train").iterdir())
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    parts = {}
    for split in ("train", "val"):
        files = sorted((folder / split).rglob("*.jpg"))
        rows = {
            "image": [str(f) for f in files],
            "label": [classes.index(f.parent.name) for f in files],
        }
        parts["validation" if split == "val" else split] = datasets.Dataset.from_dict(
            rows, features=features
        )
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return out


def tlplug_rate(data: str, args, workers: int, decoded: bool, scratch: Path) -> float:
    """Images/s of one pass of tlplug's training loader (the second, with decode-once)."""
    host = PluginHost()
    recipe = Recipe(workers=workers, img_size=args.img_size)
    splits = load_data(host, data, recipe)
    pipeline = build_pipeline(resolve(host, recipe)["augmentations"], DataConfig(), args.img_size)
    loaders = make_loaders(splits, pipeline, recipe, torch.device("cpu"), args.batch_size)
    caches = keep_decoded(loaders.all(), scratch) if decoded else []
    try:
        rate = 0.0
        for epoch in range(2 if decoded else 1):
            loaders.train.sampler.set_epoch(epoch)
            start, count = time.perf_counter(), 0
            for images, _ in loaders.train:
                count += len(images)
            rate = count / (time.perf_counter() - start)
        return rate
    finally:
        for cache in caches:
            cache.remove()


def plain_rate(folder: Path, args, workers: int) -> float:
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.img_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(folder / "train", transform=transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="stored image size")
    parser.add_argument("--img-size", type=int, default=160, help="training image size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_folder(root / "folder", args.images, args.size)
        subprocess.run(
            [sys.executable, "-m", "tlplug", "shard", str(folder), "--out", str(root / "shards")],
            check=True,
            capture_output=True,
        )
        hf = write_hf(folder, root / "hf")
        sources = [("folder", str(folder)), ("tar shards", str(root / "shards"))]
        if hf is not None:
            sources.append(("Hugging Face (save_to_disk)", f"hf:{hf}"))
        print(
            f"training loader, {args.images} JPEGs of {args.size} px -> {args.img_size} px, "
            f"batch {args.batch_size}, default augmentation"
        )
        for workers in args.workers:
            plain = plain_rate(folder, args, workers)
            print(f"  {workers} workers: plain ImageFolder loader {plain:7.0f} img/s")
            for name, data in sources:
                rate = tlplug_rate(data, args, workers, False, root)
                print(f"    tlplug {name:<30} {rate:7.0f} img/s  {rate / plain:4.2f}x")
            rate = tlplug_rate(str(folder), args, workers, True, root)
            print(
                f"    tlplug {'folder, decoded once':<30} {rate:7.0f} img/s  {rate / plain:4.2f}x"
            )


if __name__ == "__main__":
    main()
