"""The built-in synthetic data set: patterns drawn on the fly, so a first run needs no download.

Four classes of pattern (checker, dots, rings, stripes) in random colours, scales, angles
and positions on a noisy background. Image ``i`` of a split is a pure function of
(seed, split, i), so the set is the same on every machine and nothing is stored. It is
drawn at 96 px and suggests training at 64 px.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from tlplug.data.sources import Splits

CLASSES = ("checker", "dots", "rings", "stripes")
SIZE = 96
SUGGESTED_IMG_SIZE = 64
TRAIN_PER_CLASS = 150
VAL_PER_CLASS = 40


@attrs.frozen
class SyntheticImages:
    """``count`` drawn images of the split named ``split``; labels cycle through the classes."""

    count: int
    split: str
    seed: int

    @property
    def labels(self) -> list[int]:
        """Label of every image."""
        return [i % len(CLASSES) for i in range(self.count)]

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> Image.Image:
        """Draw image ``index``."""
        rng = random.Random(f"{self.seed}/{self.split}/{index}")
        return draw(CLASSES[index % len(CLASSES)], rng)


def synthetic_splits(seed: int = 0) -> Splits:
    """The synthetic train and validation sets."""
    from tlplug.data.sources import Splits

    n = len(CLASSES)
    return Splits(
        classes=CLASSES,
        train=SyntheticImages(TRAIN_PER_CLASS * n, "train", seed),
        val=SyntheticImages(VAL_PER_CLASS * n, "val", seed),
        info={"kind": "synthetic", "seed": seed, "size": SIZE},
        img_size=SUGGESTED_IMG_SIZE,
    )


def draw(pattern: str, rng: random.Random) -> Image.Image:
    """Draw one image of ``pattern`` with the randomness of ``rng``."""
    background = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (SIZE, SIZE, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    colour = np.array([(c + rng.randrange(80, 176)) % 256 for c in background], dtype=np.uint8)
    period = rng.uniform(10, 20)
    if pattern in ("checker", "stripes"):
        angle = rng.uniform(0, math.pi)
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        u = np.floor((x * math.cos(angle) + y * math.sin(angle)) / period)
        v = np.floor((y * math.cos(angle) - x * math.sin(angle)) / period)
        pixels[(u if pattern == "stripes" else u + v) % 2 == 0] = colour
        return Image.fromarray(pixels)
    image = Image.fromarray(pixels)
    canvas = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in colour)
    if pattern == "dots":
        for _ in range(rng.randrange(6, 14)):
            r, cx, cy = rng.uniform(3, 7), rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:  # rings: concentric bands around a random centre
        cx, cy = rng.uniform(0.3, 0.7) * SIZE, rng.uniform(0.3, 0.7) * SIZE
        gap = tuple(int(c) for c in background)
        for k in range(8, 0, -1):
            r = k * period / 2
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill if k % 2 else gap)
    return image


MARKED_CLASSES = ("mark", "plain")


def draw_marked(marked: bool, rng: random.Random, size: int = 64) -> Image.Image:
    """An image of the marked-corner set: a noisy background with squares of random dark
    and mid colours anywhere and, when ``marked``, a white square inside the top-left
    quarter. The white square is the only difference between the classes, so a model's
    evidence for ``mark`` lies in that quarter (how attribution maps are checked)."""
    background = np.array([rng.randrange(40, 200) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 24, (size, size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    canvas = ImageDraw.Draw(image)
    side = size // 5
    for _ in range(3):
        x, y = rng.randrange(size - side), rng.randrange(size - side)
        fill = tuple(rng.randrange(0, 170) for _ in range(3))
        canvas.rectangle([x, y, x + side - 1, y + side - 1], fill=fill)
    if marked:
        x, y = rng.randrange(size // 2 - side), rng.randrange(size // 2 - side)
        canvas.rectangle([x, y, x + side - 1, y + side - 1], fill=(255, 255, 255))
    return image


def write_marked(root: Path, train: int, val: int, seed: int = 0, size: int = 64) -> Path:
    """Write the marked-corner set as ``root/{train,val}/{mark,plain}/*.png`` (``train``
    and ``val`` images per class) and return ``root``."""
    for split, count in (("train", train), ("val", val)):
        for label in MARKED_CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = random.Random(f"{seed}/{split}/{label}/{i}")
                draw_marked(label == "mark", rng, size).save(folder / f"{label}_{i}.png")
    return root
