"""The quality benchmark's image tasks, built from real images that ship inside pip packages.

Sources: scikit-learn's handwritten digits (8x8 grayscale scans, upscaled) and the sample
photos of scikit-image (``skimage.data``). Every image is written as an RGB PNG of
``size`` pixels into an ImageFolder tree (``train/<class>/``, ``val/<class>/``), once per
cache directory.

Photo patches never leak between train and val: each photo is cut into a grid of blocks
coloured like a checkerboard, training patches come from the "white" blocks and
validation patches from the "black" ones, so no pixel is in both splits.

The source task, on which :func:`build_source` trains the stand-in pretrained weights,
shares no class and no photo with the downstream tasks: digits 0-4 and patches of five
grayscale photos. Downstream: digits 5-9 (also few-shot), which colour photo a patch
comes from, and grayscale textures.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Samples = dict[str, list[Image.Image]]  # class name -> images
Splits = tuple[Samples, Samples]  # train, val

SOURCE_PHOTOS = ("camera", "coins", "page", "text", "clock")
COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
TEXTURES = ("brick", "grass", "gravel", "moon")
VERSION = 1  # bump when the images a task builds change


@dataclass(frozen=True)
class Sizes:
    """Images per class: ``train`` and ``val`` for a task, ``few`` for a few-shot train set."""

    train: int
    val: int
    few: int
    size: int  # pixels, square


@dataclass(frozen=True)
class Task:
    """A downstream task: its name, a one-line description and the builder of its splits."""

    name: str
    what: str
    build: Callable[[Sizes, np.random.Generator], Splits]


def to_rgb(pixels: np.ndarray) -> Image.Image:
    """A PIL RGB image from grayscale, boolean, RGB or RGBA pixels."""
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))


def photo(name: str, gray: bool = False) -> Image.Image:
    """The scikit-image sample photo ``name`` as RGB (three equal channels if ``gray``)."""
    import skimage.data

    image = to_rgb(getattr(skimage.data, name)())
    return image.convert("L").convert("RGB") if gray else image


def digit_images(digits: tuple[int, ...], size: int) -> dict[str, list[Image.Image]]:
    """scikit-learn's digits of the given classes, upscaled to ``size`` px, in file order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    found: dict[str, list[Image.Image]] = {str(d): [] for d in digits}
    for pixels, label in zip(data.images, data.target, strict=True):
        if int(label) in digits:
            gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))
            found[str(label)].append(gray.resize((size, size), Image.BILINEAR).convert("RGB"))
    return found


def digit_splits(
    digits: tuple[int, ...], train: int, val: int, size: int, rng: np.random.Generator
) -> Splits:
    """Disjoint train and val draws of ``train`` and ``val`` digits per class."""
    pools = digit_images(digits, size)
    splits: Splits = ({}, {})
    for name, images in pools.items():
        order = rng.permutation(len(images))
        splits[0][name] = [images[i] for i in order[:train]]
        splits[1][name] = [images[i] for i in order[train : train + val]]
    return splits


def patches(
    image: Image.Image,
    count: int,
    parity: int,
    size: int,
    rng: np.random.Generator,
    grid: int = 4,
    scale: tuple[float, float] = (0.5, 1.0),
) -> list[Image.Image]:
    """``count`` square patches from the blocks of a ``grid`` x ``grid`` checkerboard whose
    row + column has the given parity, each ``scale`` of a block's short side, resized."""
    width, height = image.size
    bw, bh = width // grid, height // grid
    blocks = [(r, c) for r in range(grid) for c in range(grid) if (r + c) % 2 == parity]
    found = []
    for _ in range(count):
        r, c = blocks[rng.integers(len(blocks))]
        side = int(rng.uniform(*scale) * min(bw, bh))
        left = c * bw + int(rng.integers(bw - side + 1))
        top = r * bh + int(rng.integers(bh - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        found.append(crop.resize((size, size), Image.BICUBIC))
    return found


def photo_splits(
    names: tuple[str, ...],
    train: int,
    val: int,
    size: int,
    rng: np.random.Generator,
    gray: bool = False,
) -> Splits:
    """Patches per photo: class = the photo, train and val from disjoint blocks."""
    splits: Splits = ({}, {})
    for name in names:
        image = photo(name, gray)
        splits[0][name] = patches(image, train, 0, size, rng)
        splits[1][name] = patches(image, val, 1, size, rng)
    return splits


TASKS = (
    Task(
        "digits",
        "digits 5-9, 8x8 scans upscaled",
        lambda s, rng: digit_splits((5, 6, 7, 8, 9), s.train, s.val, s.size, rng),
    ),
    Task(
        "digits-fewshot",
        "digits 5-9, few-shot train set",
        lambda s, rng: digit_splits((5, 6, 7, 8, 9), s.few, s.val, s.size, rng),
    ),
    Task(
        "photo-id",
        "which of 6 colour photos a patch comes from",
        lambda s, rng: photo_splits(COLOUR_PHOTOS, s.train, s.val, s.size, rng),
    ),
    Task(
        "texture",
        "4 grayscale textures (brick, grass, gravel, moon)",
        lambda s, rng: photo_splits(TEXTURES, s.train, s.val, s.size, rng, gray=True),
    ),
    Task(
        "photo-fewshot",
        "photo-id, few-shot train set",
        lambda s, rng: photo_splits(COLOUR_PHOTOS, s.few, s.val, s.size, rng),
    ),
    Task(
        "texture-fewshot",
        "texture, few-shot train set",
        lambda s, rng: photo_splits(TEXTURES, s.few, s.val, s.size, rng, gray=True),
    ),
)


def build_source(sizes: Sizes, rng: np.random.Generator) -> Splits:
    """The pretraining task: digits 0-4 and patches of five grayscale photos, 10 classes."""
    train, val = digit_splits((0, 1, 2, 3, 4), sizes.train, sizes.val, sizes.size, rng)
    photo_train, photo_val = photo_splits(
        SOURCE_PHOTOS, sizes.train, sizes.val, sizes.size, rng, gray=True
    )
    return {**train, **photo_train}, {**val, **photo_val}


def write_tree(root: Path, splits: Splits) -> None:
    """Write ``splits`` as ``root/{train,val}/<class>/NNNN.png``."""
    for split, samples in zip(("train", "val"), splits, strict=True):
        for name, images in samples.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(images):
                image.save(folder / f"{index:04d}.png")


def cached_tree(
    cache: Path, name: str, build: Callable[[Sizes, np.random.Generator], Splits], sizes: Sizes
) -> Path:
    """The ImageFolder tree of ``build``'s splits under ``cache``, built on first use; the
    folder name carries everything that decides its images, so a change builds anew."""
    root = cache / f"{name}-t{sizes.train}-v{sizes.val}-f{sizes.few}-{sizes.size}px-v{VERSION}"
    if (root / "done.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    splits = build(sizes, np.random.default_rng(0))
    write_tree(root, splits)
    counts = {
        s: {c: len(i) for c, i in d.items()} for s, d in zip(("train", "val"), splits, strict=True)
    }
    (root / "done.json").write_text(json.dumps(counts, indent=1))
    return root


def image_counts(data: Path) -> tuple[int, int, int]:
    """Train images, val images and classes of an ImageFolder tree."""
    train = sum(1 for _ in (data / "train").glob("*/*.png"))
    val = sum(1 for _ in (data / "val").glob("*/*.png"))
    return train, val, sum(1 for p in (data / "train").iterdir() if p.is_dir())
