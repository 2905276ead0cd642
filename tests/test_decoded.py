"""Decoding each image once, in memory or in a file loader workers share."""

from __future__ import annotations

import random

import pytest
import torch

from helpers import RunDirFiles
from tlplug import Engine
from tlplug.data.decoded import DecodedImages
from tlplug.data.folders import FileImages, list_images
from tlplug.data.transforms import base_transform
from tlplug.model.backbone import DataConfig

RECIPE = dict(
    backbone="timm:resnet10t",
    pretrained=False,
    img_size=32,
    batch_size=8,
    schedule="freeze-unfreeze",
    augment=("flip", "crop"),
    epochs=2,
)


class CountingImages:
    """Images on disk that count how often each is decoded."""

    def __init__(self, paths):
        self.files = FileImages(tuple(paths), tuple(0 for _ in paths))
        self.labels = self.files.labels
        self.loads = [0] * len(paths)

    def __len__(self):
        return len(self.files)

    def load(self, index):
        self.loads[index] += 1
        return self.files.load(index)


def test_each_image_is_decoded_once(image_folder, tmp_path):
    images = CountingImages(list_images(image_folder / "train")[:5])
    base = base_transform(DataConfig(), 32)
    for file in (None, tmp_path / "pixels"):
        images.loads = [0] * 5
        cache = DecodedImages(images, base, file)
        first = [cache.get(i) for i in range(5)]
        again = [(i, cache.get(i)) for i in random.sample(range(5), 5) for _ in range(2)]
        assert images.loads == [1] * 5  # every image decoded once, however often it is read
        assert all(torch.equal(a, base(images.load(i))) for i, a in enumerate(first))
        assert all(torch.equal(a, first[i]) for i, a in again)
        cache.remove()
        assert file is None or not file.exists()


@pytest.mark.slow
def test_workers_share_one_pixel_file_and_train_exactly_as_without_workers(
    image_folder, tmp_path, capsys
):
    files = RunDirFiles(".pixels-*")
    with_workers = Engine.from_plugins(files, entrypoints=False, workers=2, **RECIPE).fit(
        image_folder, out=tmp_path / "w2"
    )
    assert "images are decoded once and kept" in capsys.readouterr().out
    # the training images whole (for the crop), the validation images, the training images
    # center-cropped (a feature cache's plain view of them: made, never filled here)
    assert files.seen == [[".pixels-0", ".pixels-1", ".pixels-2"]] * 2
    assert not list((tmp_path / "w2").glob(".pixels-*"))
    alone = Engine.from_plugins(entrypoints=False, workers=0, **RECIPE).fit(
        image_folder, out=tmp_path / "w0", quiet=True
    )
    assert [r["train_loss"] for r in with_workers.history] == [
        r["train_loss"] for r in alone.history
    ]
