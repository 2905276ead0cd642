"""Linear probe, 20 epochs, resnet18 at 64 px on CPU: tlplug against the plain loop.

Both start from the same backbone weights and train a new linear head on the same 600
images (160 for validation), one after the other in this process:

(a) the plain loop: every epoch decodes every image and runs the frozen backbone;
(b) tlplug ``--schedule linear-probe`` with its default flags (``--augment flip``,
    ``--precision auto``): the backbone runs once over each image and its mirror (in bf16
    where the CPU computes it natively), the head is fit by L-BFGS; and the same in fp32;
(c) tlplug with the plain loop's settings (SGD, constant LR, ``--augment none``), in fp32
    and with ``--precision auto``.

Prints both times (each the fastest of ``--repeat`` runs), the ratio and both validation
accuracies. Goal: at least 8x faster, accuracy within 2 points.

    python bench/linear_probe.py [--epochs 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (
    IMG_SIZE,
    plain_loaders,
    plain_model,
    plain_optimizer,
    plain_train,
    pretrain,
    print_table,
    timed,
    tlplug_fit,
    write_images,
)

from tlplug import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3, help="time each row this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = pretrain(root)
        data = write_images(root / "data")

        def plain(frozen_bn: bool) -> float:
            model = plain_model(weights, num_classes=4)
            optimizer = plain_optimizer(model, args.lr, train=("fc",))
            return plain_train(model, plain_loaders(data), optimizer, args.epochs, frozen_bn)

        def tlplug(precision: str) -> float:
            return tlplug_fit(
                weights,
                data,
                root / "run",
                schedule="linear-probe",
                lr=args.lr,
                epochs=args.epochs,
                precision=precision,
            )

        def defaults(**changes) -> float:
            engine = Engine.from_plugins(
                backbone="timm:resnet18",
                weights=str(weights),
                img_size=IMG_SIZE,
                schedule="linear-probe",
                epochs=args.epochs,
                **changes,
            )
            return engine.fit(data, out=root / "run", overwrite=True, quiet=True).final_val_acc

        n = args.repeat
        rows = [
            ("plain loop (as the articles)", *timed(lambda: plain(False), n)),
            ("plain loop, BatchNorm fixed", *timed(lambda: plain(True), n)),
            ("tlplug, default flags", *timed(defaults, n)),
            ("tlplug, defaults but fp32", *timed(lambda: defaults(precision="fp32"), n)),
            ("tlplug, plain settings, fp32", *timed(lambda: tlplug("fp32"), n)),
            ("tlplug, plain settings, auto", *timed(lambda: tlplug("auto"), n)),
        ]
    print_table(
        f"linear probe, {args.epochs} epochs, resnet18 {IMG_SIZE}px, 600 train / 160 val, CPU",
        rows,
    )
    print("  goal: tlplug (default flags) >= 8x the plain loop, at least as accurate")


if __name__ == "__main__":
    main()
