"""Do batched augmentations train as well as per-image ones? The same runs, both paths.

On quality-bench tasks (real images: scikit-learn digits, scikit-image photo patches),
resnet18 from the bench's stand-in pretrained weights (several sources) is fine-tuned with
the default recipe plus ``--augment crop --augment flip --augment color-jitter``, once with
``--augment-path per-image`` and once with ``--augment-path batched`` (what ``auto``
picks on a GPU), over several seeds. Printed per task and path: the mean best and final
validation accuracy, the worst final, and the largest gap between the paths on one
(source, seed).

    python bench/augment_quality.py [--tasks digits,texture] [--sources 20x64,3x64]
        [--seeds 0,1] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from quality import BACKBONE, TASK_SIZES, pretrained_weights
from quality_tasks import TASKS, cached_tree

from tlplug import Engine

SIZE = 64
AUGMENT = ("crop", "flip", "color-jitter")
PATHS = ("per-image", "batched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,texture")
    parser.add_argument("--sources", default="20x64,3x64")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlplug-bench-quality"
    )
    args = parser.parse_args()
    cache = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    sources = {s: pretrained_weights(cache, "full", s) for s in args.sources.split(",")}
    seeds = [int(s) for s in args.seeds.split(",")]
    for task in (t for t in TASKS if t.name in args.tasks.split(",")):
        data = cached_tree(cache, task.name, task.build, TASK_SIZES["full"])
        results: dict[str, dict[tuple[str, int], tuple[float, float]]] = {p: {} for p in PATHS}
        with tempfile.TemporaryDirectory() as tmp:
            for source, weights in sources.items():
                for seed in seeds:
                    for path in PATHS:
                        result = Engine.from_plugins(
                            entrypoints=False,
                            backbone=BACKBONE,
                            weights=str(weights),
                            pretrained=False,
                            img_size=SIZE,
                            epochs=args.epochs,
                            seed=seed,
                            workers=0,
                            augment=AUGMENT,
                            augment_path=path,
                        ).fit(data, out=Path(tmp) / "run", overwrite=True, quiet=True)
                        results[path][source, seed] = (result.best_val_acc, result.final_val_acc)
        print(f"{task.name}: {task.what}; {BACKBONE} at {SIZE} px, {', '.join(AUGMENT)}")
        print(f"  {'path':<10} {'best':>7} {'final':>7} {'worst final':>12}")
        for path, runs in results.items():
            best = statistics.mean(r[0] for r in runs.values())
            final = statistics.mean(r[1] for r in runs.values())
            worst = min(r[1] for r in runs.values())
            print(f"  {path:<10} {best:7.4f} {final:7.4f} {worst:12.4f}")
        gap = max(abs(results[PATHS[0]][k][1] - results[PATHS[1]][k][1]) for k in results[PATHS[0]])
        print(f"  largest final-accuracy gap between the paths on one source and seed: {gap:.4f}")


if __name__ == "__main__":
    main()
