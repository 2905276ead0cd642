"""Top-group and full fine-tuning, resnet18 at 64 px on CPU: tlplug against the plain loop.

Both start from the same backbone weights, train on the same 600 images (160 for
validation) with SGD, and run one after the other in this process:

- top group: layer4 and the head train, the rest is frozen (the articles' second phase,
  10 epochs as they train it).
  The plain loop runs the whole network forward every batch with ``model.train()``;
  tlplug replays the frozen prefix (stem..layer3 run once), in fp32, then with
  ``--precision auto`` (bf16 on this CPU); a row without the replay shows what it gives.
  Both validate once, after the last epoch.
- full: everything trains, fp32 in both, to measure tlplug's overhead; a last row adds
  ``--compile`` (its time includes compiling, once).

Goals: top group >= 1.3x in fp32 and >= 2.5x with bf16; full fine-tune overhead <= 3%.

    python bench/fine_tune.py [--epochs 10] [--repeat 1]
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

from tlplug import Stage, hookimpl
from tlplug.train.stages import top_groups


class TopGroup:
    """A schedule plugin: the head and the group below it train from the first epoch."""

    name = "bench-top-group"

    @hookimpl
    def tlplug_register_schedules(self, register):
        register("top-group", lambda groups, epochs: [Stage(0, top_groups(groups, 2))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1, help="time each row this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = pretrain(root)
        data = write_images(root / "data")

        def plain(top_only: bool) -> float:
            model = plain_model(weights, num_classes=4)
            optimizer = plain_optimizer(model, args.lr, ("layer4", "fc") if top_only else None)
            return plain_train(model, plain_loaders(data), optimizer, args.epochs)

        def tlplug(schedule: str, precision: str, cache: str = "auto", **more) -> float:
            # Validate once at the end, as the articles' loop does.
            return tlplug_fit(
                weights,
                data,
                root / "run",
                plugins=(TopGroup(),),
                schedule=schedule,
                lr=args.lr,
                epochs=args.epochs,
                precision=precision,
                cache_features=cache,
                val_every=args.epochs,
                **more,
            )

        n = args.repeat
        runs = {
            "top group": [
                ("plain loop (as the articles)", *timed(lambda: plain(True), n)),
                (
                    "tlplug fp32, no prefix replay",
                    *timed(lambda: tlplug("top-group", "fp32", "off"), n),
                ),
                ("tlplug fp32", *timed(lambda: tlplug("top-group", "fp32"), n)),
                ("tlplug --precision auto", *timed(lambda: tlplug("top-group", "auto"), n)),
            ],
            "full": [
                ("plain loop", *timed(lambda: plain(False), n)),
                ("tlplug fp32", *timed(lambda: tlplug("full", "fp32"), n)),
                ("tlplug fp32 --compile", *timed(lambda: tlplug("full", "fp32", compile=True))),
            ],
        }
    for what, rows in runs.items():
        print_table(f"{what} fine-tune, {args.epochs} epochs, resnet18 {IMG_SIZE}px, CPU", rows)
    print("  goals: top group >= 1.3x fp32, >= 2.5x bf16; full fine-tune overhead <= 3%")


if __name__ == "__main__":
    main()
