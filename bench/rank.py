"""Does ``tlplug rank`` order backbones as fine-tuning them would? And what does it cost?

On quality-bench tasks (real images: scikit-learn digits, scikit-image photo patches), five
backbones of clearly different quality for the task:

- resnet18 trained on the bench's related source task (digits 0-4 and photo patches),
  long (20 epochs) and short (3 epochs);
- resnet18 trained on an unrelated task (tlplug's synthetic drawn patterns);
- resnet18 from random weights;
- mobilenetv3_small_050 from random weights (another architecture).

``tlplug rank`` scores them (LogME, the probe), then each is fine-tuned with the default
recipe (no flag but backbone, weights, image size and epochs). Printed: both orders, the
Kendall tau between LogME and the fine-tuned best accuracy (and the final one), and the
time of the rank against the mean time of one fine-tune.

    python bench/rank.py [--tasks digits-fewshot,texture-fewshot] [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quality import TASK_SIZES, pretrained_weights
from quality_tasks import TASKS, cached_tree
from scipy.stats import kendalltau

from tlplug import Engine
from tlplug.console import Console
from tlplug.plugins.host import PluginHost
from tlplug.recipe import Recipe
from tlplug.search.rank import Candidate, rank_backbones

SIZE = 64


def unrelated_weights(cache: Path) -> Path:
    """resnet18 trained 3 epochs on the synthetic drawn patterns, at 64 px (cached)."""
    out = cache / "pretrain-synthetic-e3-64px"
    if not (out / "model.safetensors").exists():
        engine = Engine.from_plugins(
            entrypoints=False,
            backbone="timm:resnet18",
            pretrained=False,
            schedule="full",
            epochs=3,
            img_size=SIZE,
            augment=(),
            lr=2e-3,
        )
        engine.fit(None, out=out, overwrite=True, quiet=True)
    return out / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits-fewshot,texture-fewshot")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlplug-bench-quality"
    )
    args = parser.parse_args()
    cache = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    candidates = [
        Candidate("timm:resnet18", str(pretrained_weights(cache, "full", "20x64"))),
        Candidate("timm:resnet18", str(pretrained_weights(cache, "full", "3x64"))),
        Candidate("timm:resnet18", str(unrelated_weights(cache))),
        Candidate("timm:resnet18"),
        Candidate("timm:mobilenetv3_small_050"),
    ]
    names = ["related 20 ep", "related 3 ep", "unrelated", "random", "mobilenet random"]
    for task in (t for t in TASKS if t.name in args.tasks.split(",")):
        data = cached_tree(cache, task.name, task.build, TASK_SIZES["full"])
        with tempfile.TemporaryDirectory() as tmp:
            recipe = Recipe(pretrained=False, img_size=SIZE, workers=0)
            started = time.perf_counter()
            rows = rank_backbones(
                PluginHost(), data, candidates, recipe, Path(tmp) / "rank", Console(quiet=True)
            )
            rank_seconds = time.perf_counter() - started
            by_label = {row["backbone"]: row for row in rows}
            tuned, tune_seconds = [], []
            for candidate in candidates:
                started = time.perf_counter()
                result = Engine.from_plugins(
                    entrypoints=False,
                    backbone=candidate.backbone,
                    weights=candidate.weights,
                    pretrained=False,
                    img_size=SIZE,
                    epochs=args.epochs,
                    workers=0,
                ).fit(data, out=Path(tmp) / f"tune-{len(tuned)}", quiet=True)
                tune_seconds.append(time.perf_counter() - started)
                tuned.append((result.best_val_acc, result.final_val_acc))
        scores = [by_label[c.label]["logme"] for c in candidates]
        probes = [by_label[c.label]["probe_val_acc"] for c in candidates]
        tau_best = kendalltau(scores, [b for b, _ in tuned]).statistic
        tau_final = kendalltau(scores, [f for _, f in tuned]).statistic
        tau_probe = kendalltau(probes, [b for b, _ in tuned]).statistic
        print(f"{task.name}: {task.what}, resnet18/mobilenet at {SIZE} px")
        print(f"  {'backbone':<18} {'LogME':>8} {'probe val':>10} {'tuned best':>11} {'final':>7}")
        for name, candidate, (best, final) in zip(names, candidates, tuned, strict=True):
            row = by_label[candidate.label]
            print(
                f"  {name:<18} {row['logme']:8.4f} {row['probe_val_acc']:10.4f} "
                f"{best:11.4f} {final:7.4f}"
            )
        mean_tune = sum(tune_seconds) / len(tune_seconds)
        print(
            f"  Kendall tau, LogME vs fine-tuned best {tau_best:.2f}, vs final {tau_final:.2f}; "
            f"probe val vs best {tau_probe:.2f}"
        )
        print(
            f"  rank: {rank_seconds:.1f}s for {len(candidates)} backbones = "
            f"{rank_seconds / mean_tune:.2f} of one fine-tune ({mean_tune:.1f}s)"
        )


if __name__ == "__main__":
    main()
