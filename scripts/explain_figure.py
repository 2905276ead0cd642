"""Remake docs/images/explain.png: Grad-CAM maps of a model trained on the marked-corner set.

Trains timm's resnet10t from random weights (CPU, under a minute) on
:func:`tlplug.data.synthetic.write_marked`'s images, where only a white square in the
top-left quarter tells "mark" from "plain", then runs ``tlplug explain`` on four held-out
images and lays the image and its maps side by side with ``plotting.labelled_grid``.

    python scripts/explain_figure.py [--out docs/images/explain.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlplug.data.synthetic import write_marked
from tlplug.engine import Engine
from tlplug.plotting import labelled_grid, save_image
from tlplug.ship.explain import explain_run

SIZE = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/explain.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_marked(Path(tmp) / "marked", train=40, val=8, size=SIZE)
        engine = Engine.from_plugins(
            entrypoints=False,
            backbone="timm:resnet10t",
            pretrained=False,
            img_size=SIZE,
            batch_size=16,
            workers=0,
            epochs=4,
            lr=0.003,
            schedule="full",
            augment=["none"],
            plots=False,
        )
        run = engine.fit(root, out=Path(tmp) / "run", quiet=True).run_dir
        images = [root / "val" / c / f"{c}_{i}.png" for c in ("mark", "plain") for i in (0, 1)]
        maps = Path(tmp) / "maps"
        explain_run(run, images, maps, ["mark"])
        report = json.loads((maps / "explain.json").read_text())
        tiles, captions = [], []
        side = 160
        for image, entry in zip(images, report["images"], strict=True):
            tiles.append(Image.open(image).convert("RGB").resize((side, side), Image.NEAREST))
            captions.append(f"{image.parent.name} image\npred {entry['predicted']}")
            for name in ("mark", "plain"):
                shown = entry["maps"].get(name)
                if shown:
                    tiles.append(Image.open(shown["file"]).convert("RGB").resize((side, side)))
                    captions.append(f"Grad-CAM of {name}\np={shown['prob']:.2f}")
            while len(tiles) % 3:
                tiles.append(Image.new("RGB", (side, side), "white"))
                captions.append("")
        pixels = torch.stack([torch.from_numpy(np.array(t)) for t in tiles])
        grid = labelled_grid(pixels.permute(0, 3, 1, 2).float() / 255, captions, 6)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.quantize(colors=128).convert("RGB"), args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
