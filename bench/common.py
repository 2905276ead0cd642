"""What the benchmarks share: data on disk, stand-in pretrained weights, the plain loop.

The plain loop is the one the seed articles write (examples/, ../shared/seeds): an
ImageFolder over PIL images with a standard DataLoader, ``requires_grad`` freezing,
``model.train()`` for the whole model, fp32, one optimizer per phase.
"""

from __future__ import annotations

import time
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision import datasets, transforms

from tlplug import Engine
from tlplug.compute.memory import peak_mb, reset_peak
from tlplug.data.synthetic import synthetic_splits

IMG_SIZE = 64
BATCH = 32


def write_images(root: Path, seed: int = 0) -> Path:
    """The synthetic set as an ImageFolder tree of JPEGs (train/ and val/), 600 + 160 images."""
    splits = synthetic_splits(seed)
    for name, images in (("train", splits.train), ("val", splits.val)):
        for index in range(len(images)):
            folder = root / name / splits.classes[images.labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            images.load(index).save(folder / f"{index:04d}.jpg", quality=90)
    return root


def pretrain(root: Path, backbone: str = "timm:resnet18") -> Path:
    """Stand-in pretrained weights (no download here): two epochs of full training on
    another draw of the synthetic set, so a linear probe has features worth probing."""
    out = root / "pretrain"
    data = write_images(root / "pretrain-data", seed=7)
    engine = Engine.from_plugins(
        backbone=backbone,
        pretrained=False,
        schedule="full",
        epochs=2,
        img_size=IMG_SIZE,
        augment=(),
        lr=2e-3,
    )
    engine.fit(data, out=out, overwrite=True, quiet=True)
    return out / "model.safetensors"


def plain_model(weights: Path, num_classes: int, seed: int = 0) -> nn.Module:
    """timm resnet18 with the weights loaded and a new fc (initialized from ``seed``), as an
    article builds it."""
    from tlplug.rundir.weights import backbone_part, read_state_dict

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=num_classes)
    model.load_state_dict(backbone_part(read_state_dict(weights)), strict=False)
    return model


def plain_optimizer(
    model: nn.Module, lr: float, train: tuple[str, ...] | None = None
) -> torch.optim.Optimizer:
    """SGD over what the articles train: everything, or only the modules named in ``train``
    (``("fc",)``, ``("layer4", "fc")``), the rest frozen with ``requires_grad``."""
    if train is not None:
        for param in model.parameters():
            param.requires_grad = False
        for name in train:
            for param in model.get_submodule(name).parameters():
                param.requires_grad = True
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def plain_loaders(
    root: Path, img_size: int = IMG_SIZE
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """ImageFolder + PIL + a standard DataLoader, as the articles write them."""
    transform = transforms.Compose(
        [
            transforms.Resize(int(img_size / 0.875)),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    train = datasets.ImageFolder(root / "train", transform=transform)
    val = datasets.ImageFolder(root / "val", transform=transform)
    return (
        torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True),
        torch.utils.data.DataLoader(val, batch_size=BATCH, shuffle=False),
    )


def plain_train(
    model, loaders, optimizer, epochs: int, frozen_bn: bool = False, peaks: list | None = None
) -> float:
    """The articles' loop: ``model.train()``, step every batch; returns the final val acc.

    ``frozen_bn`` fixes the articles' BatchNorm bug (frozen layers' statistics drifting in
    train mode) by keeping every module without trainable parameters in eval mode. With
    ``peaks``, each epoch's peak memory (MiB, as tlplug measures it) is appended to it.
    """
    train, val = loaders
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        reset_peak(torch.device("cpu"))
        model.train()
        if frozen_bn:
            for module in model.modules():
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        for images, labels in train:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
        if peaks is not None:
            peaks.append(peak_mb(torch.device("cpu")))
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in val:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


def tlplug_fit(weights: Path, data: Path, out: Path, plugins=(), **recipe) -> float:
    """Train with tlplug from ``weights`` on ``data`` with the benchmarks' common settings
    (SGD, constant LR, no augmentation, 64 px); return the final val acc."""
    return tlplug_run(weights, data, out, plugins, **recipe).final_val_acc


def tlplug_run(weights: Path, data: Path, out: Path, plugins=(), **recipe):
    """:func:`tlplug_fit`, returning the whole :class:`~tlplug.FitResult`."""
    settings = dict(
        backbone="timm:resnet18",
        weights=str(weights),
        augment=(),
        optimizer="sgd",
        weight_decay=0.0,
        lr_schedule="constant",
        batch_size=BATCH,
        img_size=IMG_SIZE,
    )
    engine = Engine.from_plugins(*plugins, **(settings | recipe))
    return engine.fit(data, out=out, overwrite=True, quiet=True)


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    """Rows of (name, seconds, val acc), with the speed-up and accuracy against the first."""
    print(title)
    base_s, base_acc = rows[0][1], rows[0][2]
    for name, seconds, acc in rows:
        print(
            f"  {name:<30} {seconds:6.1f} s  {base_s / seconds:5.2f}x  val_acc {acc:.4f} "
            f"({100 * (acc - base_acc):+.1f} points)"
        )


def timed(fn, repeat: int = 1):
    """``(seconds, result)`` of calling ``fn``: the fastest of ``repeat`` calls, as timeit
    reports, so one-off stalls of a shared machine do not decide a ratio."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result
