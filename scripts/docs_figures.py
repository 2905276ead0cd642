"""Make the pictures of docs/rank.md and docs/calibration.md from real runs (CPU, a few
minutes): docs/images/rank.png and docs/images/reliability.png.

On the built-in synthetic set at 32 px, from random weights (no download):

1. resnet10t is fine-tuned for a few epochs (``full`` schedule); the run calibrates itself
   on its validation images, and ``tlplug eval`` draws its reliability diagram;
2. ``tlplug rank`` scores resnet10t with those weights against resnet10t, resnet18 and
   mobilenetv3_small_050 from random weights.

The tables are printed, for the pages' text.

    python scripts/docs_figures.py [--out docs/images] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from tlplug import Engine, evaluate_run
from tlplug.console import Console
from tlplug.plugins.host import PluginHost
from tlplug.recipe import Recipe
from tlplug.search.rank import RANK_PLOT, Candidate, rank_backbones, rank_table
from tlplug.ship.evaluate import RELIABILITY

SIZE = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the plot names the weights file as given: run/model.safetensors
        run = Path("run")
        engine = Engine.from_plugins(
            entrypoints=False,
            backbone="timm:resnet10t",
            pretrained=False,
            img_size=SIZE,
            schedule="full",
            epochs=args.epochs,
            workers=0,
            plots=False,
        )
        result = engine.fit(None, out=run, quiet=True)
        print(f"fine-tuned resnet10t: best val acc {result.best_val_acc:.4f}")
        report = evaluate_run(run, out=Path("eval"))
        c = report.calibration
        print(
            f"calibration: temperature {c['temperature']:.3f}; ECE {c['ece_before']:.4f} -> "
            f"{c['ece_after']:.4f}, NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}"
        )
        shutil.copy(Path("eval") / RELIABILITY, out / RELIABILITY)
        candidates = [
            Candidate("timm:resnet10t", str(run / "model.safetensors")),
            Candidate("timm:resnet10t"),
            Candidate("timm:resnet18"),
            Candidate("timm:mobilenetv3_small_050"),
        ]
        recipe = Recipe(pretrained=False, img_size=SIZE, workers=0)
        host = PluginHost([], entrypoints=False)
        ranked = Path("rank")
        rows = rank_backbones(host, None, candidates, recipe, ranked, Console(), None)
        print("\n".join(rank_table(rows)))
        shutil.copy(ranked / RANK_PLOT, out / RANK_PLOT)
    print(f"wrote {out / RANK_PLOT}, {out / RELIABILITY}")


if __name__ == "__main__":
    main()
