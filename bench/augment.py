"""Augmentation throughput on this machine's CPU: images/s of tlplug's per-image path (the
draws and the pixel work in the loader, one image at a time) and of its batched path (the
draws in the loader, the pixel work once per batch, as on a GPU), against a plain
torchvision per-image pipeline (RandomResizedCrop, RandomHorizontalFlip, ColorJitter on
uint8 tensors) measured in the same run. The images are decoded already (decode-once), so
this is augmentation alone: crop from the whole image, flip, colour jitter, normalization.

    python bench/augment.py [--images 256] [--sizes 64 160] [--batch-size 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torchvision.transforms import v2

from tlplug.data.batched import collate
from tlplug.data.pipeline import build_pipeline
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import resolve
from tlplug.recipe import Recipe

AUGMENT = ("crop", "flip", "color-jitter")


def stored_images(count: int, base) -> list[torch.Tensor]:
    """``count`` whole images as decode-once keeps them (short side ``base.resize``, 4:3)."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, base.resize, base.resize * 4 // 3)
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)] * count


def best_rates(makers: dict, count: int, rounds: int) -> dict[str, float]:
    """Images/s of consuming each of ``makers`` (functions making an iterable of batches),
    the best of ``rounds`` rounds that take them in turn (so each sees the machine's
    load alike)."""
    best = dict.fromkeys(makers, 0.0)
    for _ in range(rounds):
        for name, batches in makers.items():
            start = time.perf_counter()
            for _ in batches():
                pass
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


def tlplug_batches(images, pipeline, batch_size: int):
    """Batches of normalized images through ``pipeline``'s training transform, each image
    with its own item seed, as the loader and the device would make them."""
    normalize = pipeline.normalize
    for start in range(0, len(images), batch_size):
        items = []
        for index in range(start, min(start + batch_size, len(images))):
            with torch.random.fork_rng(devices=()):
                torch.random.default_generator.manual_seed(index)
                items.append((pipeline.train(images[index]), 0))
        batch, _ = collate(items)
        yield normalize(batch)


def plain_batches(images, size: int, batch_size: int):
    """The plain torchvision per-image pipeline, normalized as a batch."""
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
        ]
    )
    normalize = v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.stack([transform(image) for image in chunk])
        yield normalize(batch.float().div_(255))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 160])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5, help="best of this many")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = resolve(PluginHost(), Recipe(augment=AUGMENT))["augmentations"]
    print(
        f"augmentation on the CPU ({args.threads} threads): {', '.join(AUGMENT)}, "
        f"{args.images} decoded images, batch {args.batch_size}"
    )
    for size in args.sizes:
        one, many = (build_pipeline(chosen, DataConfig(), size, b) for b in (False, True))
        images = stored_images(args.images, one.training_base)
        makers = {
            "plain": functools.partial(plain_batches, images, size, args.batch_size),
            "per-image": functools.partial(tlplug_batches, images, one, args.batch_size),
            "batched": functools.partial(tlplug_batches, images, many, args.batch_size),
        }
        rates = best_rates(makers, len(images), args.rounds)
        plain = rates.pop("plain")
        print(f"  {size} px: plain torchvision per-image {plain:7.0f} img/s")
        for name, made in rates.items():
            print(f"    tlplug {name:<10} {made:7.0f} img/s  {made / plain:4.2f}x")


if __name__ == "__main__":
    main()
