"""Memory and time of a top-group stage (layer4 + head) at 224 px, resnet18 on CPU: the
plain loop against tlplug with and without the frozen-prefix replay.

The three run one after the other in this process, from the same weights, on the same
600 training images, for ``--epochs`` epochs at batch 32 in fp32. Each row gives the
peak resident memory of its last epoch (the process's peak RSS, reset at the epoch's
start: the model, optimizer, batches and activations of that epoch, over the same
baseline for every row) and the whole time. tlplug with replay also holds the cached
layer3 outputs of every image (printed separately); the frozen prefix then runs once per
image instead of every step.

    python bench/prefix_memory.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (
    plain_loaders,
    plain_model,
    plain_optimizer,
    plain_train,
    pretrain,
    timed,
    tlplug_run,
    write_images,
)
from fine_tune import TopGroup

SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = pretrain(root)
        data = write_images(root / "data")

        def plain() -> float:
            model = plain_model(weights, num_classes=4)
            optimizer = plain_optimizer(model, 0.01, train=("layer4", "fc"))
            peaks: list[float] = []
            plain_train(model, plain_loaders(data, SIZE), optimizer, args.epochs, peaks=peaks)
            return peaks[-1]

        def tlplug(cache: str) -> float:
            result = tlplug_run(
                weights,
                data,
                root / "run",
                plugins=(TopGroup(),),
                schedule="top-group",
                epochs=args.epochs,
                img_size=SIZE,
                cache_features=cache,
                val_every=args.epochs,
                lr=0.01,
            )
            return result.history[-1]["peak_memory_mb"]

        rows = [
            ("plain loop (as the articles)", *timed(plain)),
            ("tlplug, no prefix replay", *timed(lambda: tlplug("off"))),
            ("tlplug, prefix replay", *timed(lambda: tlplug("auto"))),
        ]
    cached = 760 * 256 * (SIZE // 16) ** 2 * 4 / 2**20  # layer3 outputs, fp32
    print(f"top group (layer4 + head), {args.epochs} epochs, resnet18 {SIZE}px, batch 32, CPU")
    base_peak = rows[0][2]
    for name, seconds, peak in rows:
        print(
            f"  {name:<30} {seconds:6.1f} s  peak {peak:7.0f} MiB "
            f"({peak - base_peak:+.0f} MiB against the plain loop)"
        )
    decoded = 760 * 3 * SIZE * SIZE / 2**20  # tlplug's decoded images, uint8
    print(
        f"  of tlplug's peaks: decoded images {decoded:.0f} MiB (both rows); "
        f"the replay's layer3 outputs {cached:.0f} MiB (last row)"
    )


if __name__ == "__main__":
    main()
