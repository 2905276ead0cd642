"""The batched augmentation path: each image's draws made in the loader under its item
seed, the pixel work for the whole batch; the random resized crop from the whole image."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from tlplug import Engine
from tlplug.data.batched import Drawn, collate
from tlplug.data.decoded import DecodedImages
from tlplug.data.loaders import TransformedImages
from tlplug.data.pipeline import build_pipeline, choose_batched
from tlplug.errors import OptionError
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import resolve
from tlplug.recipe import Recipe

SIZE = 32
AUGMENT = ("crop", "flip", "color-jitter")


def chosen(augment=AUGMENT, **options):
    recipe = Recipe(augment=augment, augment_opts=options)
    return resolve(PluginHost(entrypoints=False), recipe)["augmentations"]


def pipelines(augment=AUGMENT, **options):
    augmentations = chosen(augment, **options)
    made = [build_pipeline(augmentations, DataConfig(), SIZE, b) for b in (False, True)]
    return augmentations, *made


class Images:
    """An ImageList of PIL images made by the test."""

    def __init__(self, images):
        self.images, self.labels = list(images), [0] * len(images)

    def __len__(self):
        return len(self.images)

    def load(self, index):
        return self.images[index]


def smooth(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random picture: colour gradients, so resamplings of it agree closely."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(3, 2, 2, generator=generator) * 255
    grid = torch.nn.functional.interpolate(corners[None], (height, width), mode="bilinear")[0]
    return Image.fromarray(grid.permute(1, 2, 0).to(torch.uint8).numpy())


def marked(width: int, height: int, edge: str) -> Image.Image:
    """Grey, with a red band along one edge: a twelfth of the left side or of the top."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    band = (0, 0, width // 12, height) if edge == "left" else (0, 0, width, height // 12)
    image.paste((255, 0, 0), band)
    return image


def test_batched_output_is_the_per_image_output_for_the_same_item_seeds():
    _, per_image, batched = pipelines(**{"color-jitter": {"hue": 0.2}})
    images = Images([smooth(90, 60, 0), smooth(60, 90, 1), smooth(48, 48, 2), smooth(130, 40, 3)])
    one = TransformedImages(images, per_image.training_base, per_image.train)
    many = TransformedImages(images, batched.training_base, batched.train)
    for epoch in range(3):
        keys = [(index, 1000 * epoch + index) for index in range(len(images))]
        expected = torch.stack([one[key][0] for key in keys]).float()
        drawn, labels = collate([many[key] for key in keys])
        assert isinstance(drawn, Drawn) and len(drawn) == 4 and labels.tolist() == [0] * 4
        got = drawn.augmented() * 255
        assert got.shape == expected.shape == (4, 3, SIZE, SIZE)
        # the same window, flip, factors and order; only resampling and rounding differ
        assert (got - expected).abs().mean(dim=(1, 2, 3)).max() < 4.0


def test_an_image_comes_out_the_same_whatever_shares_its_batch():
    _, _, batched = pipelines(**{"color-jitter": {"hue": 0.1}})
    images = Images([smooth(90, 60, seed) for seed in range(3)] + [smooth(60, 90, 3)])
    dataset = TransformedImages(images, batched.training_base, batched.train)
    together, _ = collate([dataset[(index, 7 + index)] for index in range(4)])
    for index in range(4):
        alone, _ = collate([dataset[(index, 7 + index)]])
        assert torch.allclose(alone.augmented()[0], together.augmented()[index], atol=1e-5)


def test_batched_draws_keep_the_per_image_distributions():
    _, _, batched = pipelines(crop={"scale": [0.2, 0.9], "ratio": [0.5, 2.0]})
    image = torch.zeros(3, 36, 54, dtype=torch.uint8)
    draws = []
    for seed in range(2000):
        torch.random.default_generator.manual_seed(seed)
        draws.append(batched.train(image).draws)
    draws = torch.stack(draws)
    top, left, height, width = draws[:, :4].unbind(1)
    area = height * width / (36 * 54)
    # windows of whole pixels: the drawn area and aspect up to rounding
    assert area.min() >= 0.2 * 0.9 and area.max() <= 0.9 * 1.1
    aspect = width / height
    assert aspect.min() >= 0.5 * 0.85 and aspect.max() <= 2.0 * 1.15
    assert (top + height).max() <= 36 and (left + width).max() <= 54 and top.min() >= 0
    # the distribution of torchvision's (v1) per-image RandomResizedCrop, drawn apart
    reference = []
    for seed in range(2000):
        torch.random.default_generator.manual_seed(10_000 + seed)
        reference.append(RandomResizedCrop.get_params(image, [0.2, 0.9], [0.5, 2.0])[2:])
    rows, columns = torch.tensor(reference, dtype=torch.float32).unbind(1)
    assert abs(area.mean() - (rows * columns / (36 * 54)).mean()) < 0.02
    assert abs(aspect.log().mean() - (columns / rows).log().mean()) < 0.05
    flips = draws[:, 5]
    assert abs(flips.mean().item() - 0.5) < 0.04
    order, factors = draws[:, 6:10], draws[:, 10:]
    assert (order.sort(dim=1).values == torch.arange(4.0)).all()  # each a permutation
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4
    assert (factors[:, 3] == 0).all()  # no hue asked for: neutral
    assert abs(factors[:, 0].mean().item() - 1.0) < 0.03


@pytest.mark.parametrize("path", ["per-image", "batched"])
def test_crop_windows_come_from_the_whole_image(path):
    _, per_image, batched = pipelines(augment=("crop",))
    pipeline = batched if path == "batched" else per_image
    # wide (3:2) with a red left edge, upright (2:3) with a red top: the center square
    # holds neither band, the whole image both
    images = Images([marked(96, 64, "left"), marked(64, 96, "top")])
    dataset = TransformedImages(images, pipeline.training_base, pipeline.train)
    reached = [0, 0]
    for seed in range(40):
        batch, _ = collate([dataset[(index, seed)] for index in range(2)])
        pixels = batch.augmented() * 255 if isinstance(batch, Drawn) else batch.float()
        red = (pixels[:, 0] > 200) & (pixels[:, 1] < 60)  # (2, S, S)
        for index, mask in enumerate(red):
            if mask.any():
                reached[index] += 1
                along = mask.any(dim=0) if index == 0 else mask.any(dim=1)
                assert along[0], "the band stays on its own edge"
    assert min(reached) >= 5


def test_decode_once_keeps_whole_images_of_either_orientation(tmp_path):
    _, per_image, _ = pipelines(augment=("crop",))
    base = per_image.training_base
    images = Images([smooth(90, 60, 0), smooth(60, 90, 1), smooth(200, 50, 2)])
    for file in (None, tmp_path / "pixels"):
        cache = DecodedImages(images, base, file)
        for _ in range(2):
            for index in range(3):
                assert torch.equal(cache.get(index), base(images.load(index)))
        cache.remove()
    assert base(images.load(2)).shape == (3, base.resize, math.floor(base.resize * 1.5))


def test_auto_batches_on_a_gpu_and_says_why_not_otherwise():
    default = chosen()
    assert choose_batched(default, "auto", "cuda") == (True, "GPU")
    assert choose_batched(default, "auto", "cpu")[0] is False
    assert choose_batched(default, "batched", "cpu") == (True, "asked")
    erasing = chosen(augment=("flip", "random-erasing"))
    assert choose_batched(erasing, "auto", "cuda") == (False, "no batched form: random-erasing")
    with pytest.raises(OptionError, match="random-erasing has no batched form"):
        choose_batched(erasing, "batched", "cuda")


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_batched_run_trains_and_records_the_choice(image_folder, tmp_path, tiny, workers, capsys):
    # the head's epoch trains on cached features of drawn views, the next on the images
    recipe = {**tiny, "augment": AUGMENT, "epochs": 2, "workers": workers}
    result = Engine.from_plugins(entrypoints=False, augment_path="batched", **recipe).fit(
        image_folder, out=tmp_path / "run"
    )
    assert "crop, flip, color-jitter batched on the device (asked)" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert record["augmentation"] == {
        "path": "batched",
        "why": "asked",
        "batched": list(AUGMENT),
        "per_image": [],
        "whole_image": True,
    }
    assert record["decoded_images"]["kept"]
    assert [r["feature_cache"] for r in result.history] == [True, False]
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_a_run_on_the_cpu_records_the_per_image_choice(image_folder, tmp_path, tiny):
    recipe = {**tiny, "augment": ("flip",), "schedule": "linear-probe", "epochs": 1}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert record["augmentation"]["path"] == "per-image"
    assert record["augmentation"]["per_image"] == ["flip"]
    assert not record["augmentation"]["whole_image"]
