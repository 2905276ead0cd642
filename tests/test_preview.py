"""tlplug augment-preview: a PNG grid of augmented training images."""

import torch
from PIL import Image

from helpers import tlplug
from tlplug.data.preview import write_preview
from tlplug.engine import Engine


def grid_size(count: int, columns: int, size: int) -> tuple[int, int]:
    """Tiles enlarged to at least 128 px, 2 px apart, each row with a 26 px label strip."""
    rows, tile = -(-count // columns), size * -(-128 // size)
    return columns * (tile + 2) + 2, rows * (tile + 2 + 26) + 2


def test_write_preview_of_the_synthetic_set(tiny, tmp_path):
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone=tiny["backbone"],
        img_size=32,
        augment=("cutmix", "random-erasing", "flip", "crop"),
    )
    preview = write_preview(engine, tmp_path / "grid.png", count=6)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == preview.size == grid_size(6, 3, 32)
    assert preview.images.shape == (6, 3, 32, 32)
    assert preview.images.min() >= 0 and preview.images.max() <= 1
    assert torch.allclose(preview.targets.sum(1), torch.ones(6))
    assert preview.augmentations == {
        "pixels": ("crop", "flip"),
        "tensor": ("random-erasing",),
        "batch": ("cutmix",),
    }
    assert len(preview.labels()) == 6


def test_cli_preview_same_seed_same_grid_and_no_overwrite(capsys, image_folder, tmp_path):
    out = tmp_path / "grid.png"
    args = [
        "augment-preview",
        "--data",
        image_folder,
        "--backbone",
        "timm:resnet10t",
        "--img-size",
        32,
        "--augment",
        "flip",
        "--augment",
        "crop",
        "--augment",
        "mixup",
        "--augment-opt",
        "mixup.alpha=0.4",
        "--count",
        5,
        "--out",
        out,
    ]
    code, stdout, stderr = tlplug(capsys, *args)
    assert code == 0, stderr
    assert f"wrote {out} " in stdout and "pixels crop, flip; batch mixup" in stdout
    with Image.open(out) as image:
        assert image.size == grid_size(5, 3, 32)
    first = out.read_bytes()

    code, stdout, stderr = tlplug(capsys, *args)
    assert code != 0 and stderr.count("\n") == 1 and "--overwrite" in stderr
    assert out.read_bytes() == first

    code, _, stderr = tlplug(capsys, *args, "--overwrite")
    assert code == 0, stderr
    assert out.read_bytes() == first  # the same seed draws the same images and augmentations
    code, _, stderr = tlplug(capsys, *args, "--overwrite", "--seed", 1)
    assert code == 0, stderr
    assert out.read_bytes() != first


def test_cli_preview_errors(capsys, tmp_path):
    code, _, stderr = tlplug(capsys, "augment-preview", "--out", tmp_path / "grid.jpg")
    assert code != 0 and ".png" in stderr and stderr.count("\n") == 1
    code, _, stderr = tlplug(
        capsys,
        "augment-preview",
        "--augment",
        "mixup",
        "--augment-opt",
        "mixup.alpha=0",
        "--backbone",
        "timm:resnet10t",
        "--img-size",
        32,
        "--out",
        tmp_path / "grid.png",
    )
    assert code != 0 and "'mixup' option 'alpha' must be greater than 0" in stderr
    assert not (tmp_path / "grid.png").exists()


def test_cli_preview_without_augmentation(capsys, tmp_path):
    code, stdout, stderr = tlplug(
        capsys,
        "augment-preview",
        "--augment",
        "none",
        "--backbone",
        "timm:resnet10t",
        "--img-size",
        32,
        "--count",
        1,
        "--out",
        tmp_path / "one.png",
    )
    assert code == 0, stderr
    assert "1 training image at 32px" in stdout and "augmentations: none" in stdout
    with Image.open(tmp_path / "one.png") as image:
        assert image.size == grid_size(1, 1, 32)
