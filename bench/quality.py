"""Quality on real images: every tlplug schedule against the seed articles' loops.

What it measures: validation accuracy (best epoch and last epoch) and wall-clock seconds of
each way to transfer one set of pretrained weights to a new task, with the same weights,
the same epoch budget and the same images for every row. Why: speed benchmarks
(linear_probe.py, fine_tune.py) say nothing about whether tlplug's schedules and default
flags *learn* as well as the hand-written loops users would otherwise copy; this does.

Rows per task:

- ``default``: tlplug with no schedule and no flag given (backbone, weights, image size
  and epochs only), then every registered schedule that needs no option, each with
  otherwise default flags (AdamW, cosine LR, flip augmentation, ...);
- ``auto`` (with ``--auto``): ``--schedule auto``, a search over the schedules on a held-out
  part of the training images, then the winner's run, timed whole;
- the seed articles' loops in plain PyTorch (bench/common.py), with the articles' own
  optimizers and learning rates, adapted to resnet18 (see :func:`article_rows`).

Tasks come from real images shipped in pip packages (scikit-learn digits, scikit-image
photos), see quality_tasks.py. The "pretrained" weights are trained here on a source task
that shares no class and no photo with the downstream tasks, and cached. A claim must hold
for weights nobody tuned on, so every row runs from several source weights (``--sources``:
trained longer, shorter, at another resolution) and seeds (``--seeds``); a row's accuracies
are the means over all of them, "worst" is the lowest final/best ratio of any one run.
Seconds are wall clock (summed); the "load" column is the 1-minute load average when a row
ended, to show when other work shared the CPU. At the end the claims are checked: every
schedule's final >= 0.9 x its best, the default >= linear-probe and >= the best article
loop, ``--schedule auto`` (with ``--auto``) within 1 point of the best schedule.
``--quick`` runs two tasks on tiny 32 px sets for 2 epochs: a smoke test, not results.

    python bench/quality.py [--tasks digits,texture] [--epochs 10] [--quick]
        [--sources 20x64,3x64,8x32] [--seeds 0,1,2] [--auto] [--search]
        [--cache-dir DIR] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import plain_loaders, plain_model, plain_optimizer, plain_train
from quality_report import BASELINE, Row, TaskResult, print_summary, print_task, write_json
from quality_tasks import TASKS, Sizes, build_source, cached_tree, image_counts
from torch import nn

from tlplug import Engine
from tlplug.plugins.host import PluginHost

BACKBONE = "timm:resnet18"
TASK_SIZES = {"full": Sizes(train=60, val=40, few=12, size=64), "quick": Sizes(8, 8, 4, 32)}
SOURCE_IMAGES = {"full": (120, 30), "quick": (16, 8)}  # train, val images a class
SOURCES = {"full": "20x64,3x64,8x32", "quick": "1x32"}  # source epochs x image size
QUICK_TASKS = "digits-fewshot,photo-id"  # one of each builder: --quick is a smoke run
Phases = dict[int, Callable[[], torch.optim.Optimizer]]  # epoch -> optimizer built then


def pretrained_weights(cache: Path, mode: str, source: str, backbone: str = BACKBONE) -> Path:
    """Stand-in pretrained weights of ``backbone`` (resnet18 unless named): full training
    with tlplug on the source task (digits 0-4, patches of five grayscale photos) for the
    epochs and at the image size ``source`` names ("EPOCHSxSIZE"), cached under ``cache``."""
    epochs, size = (int(part) for part in source.split("x"))
    train, val = SOURCE_IMAGES[mode]
    data = cached_tree(cache, "source", build_source, Sizes(train, val, few=0, size=size))
    named = "" if backbone == BACKBONE else f"-{backbone.split(':')[-1]}"
    out = cache / f"pretrain-{data.name}-e{epochs}-lr0.002{named}"
    if (out / "model.safetensors").exists():
        return out / "model.safetensors"
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone=backbone,
        pretrained=False,
        schedule="full",
        epochs=epochs,
        img_size=size,
        augment=(),
        lr=2e-3,
    )
    result = engine.fit(data, out=out, overwrite=True, quiet=True)
    print(f"pretrained {source} on the source task: val acc {result.final_val_acc:.4f} -> {out}")
    return out / "model.safetensors"


def schedule_names() -> tuple[list[str], list[str]]:
    """The registered schedules (built-ins only) that run without options, and the rest."""
    registry = PluginHost(entrypoints=False).registry("schedules")
    usable, skipped = [], []
    for name in registry.names():
        needs = any(option.required for option in registry.get(name).options.values())
        (skipped if needs else usable).append(name)
    return usable, skipped


def tlplug_row(
    label: str, weights: Path, data: Path, out: Path, size: int, epochs: int, **recipe
) -> Row:
    """One tlplug run through the public API, timed from building the engine to the end."""
    start = time.perf_counter()
    engine = Engine.from_plugins(
        entrypoints=False,
        backbone=BACKBONE,
        weights=str(weights),
        img_size=size,
        epochs=epochs,
        **recipe,
    )
    result = engine.fit(data, out=out, overwrite=True, quiet=True)
    seconds = time.perf_counter() - start
    used = {c for h in result.history for c in ("feature_cache", "prefix_cache") if h.get(c)}
    note = "cached: " + ", ".join(sorted(used)) if used else ""
    return Row(label, result.best_val_acc, result.final_val_acc, seconds, note)


def plain_epochs(model: nn.Module, loaders, phases: Phases, epochs: int) -> tuple[float, float]:
    """The articles' loop, one epoch at a time so every epoch is validated: ``phases`` maps
    an epoch (from 0) to the optimizer built then, as the articles rebuild it."""
    accs, optimizer = [], None
    for epoch in range(epochs):
        optimizer = phases[epoch]() if epoch in phases else optimizer
        accs.append(plain_train(model, loaders, optimizer, 1))
    return max(accs), accs[-1]


def mlp_head(model: nn.Module, classes: int) -> torch.optim.Optimizer:
    """Article 3's classifier on resnet18: the 512 pooled features (VGG-16's were 25088)
    -> 4096 -> 4096 -> classes, ReLU and dropout 0.5; the backbone frozen; default Adam."""
    width = model.num_features
    model.fc = nn.Sequential(
        nn.Linear(width, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, classes),
    )
    for param in model.parameters():
        param.requires_grad = False
    for param in model.fc.parameters():
        param.requires_grad = True
    return torch.optim.Adam(model.fc.parameters())


def article_fc_then_layer4(model: nn.Module, train, classes: int, epochs: int):
    """Article 1: a new fc for the first half of the epochs, then layer4 + fc with a
    rebuilt optimizer; SGD lr 0.001, momentum 0.9, batch 32 (the article: ResNet-50)."""
    return train, {
        0: lambda: plain_optimizer(model, 1e-3, ("fc",)),
        max(1, epochs // 2): lambda: plain_optimizer(model, 1e-3, ("layer4", "fc")),
    }


def article_full(model: nn.Module, train, classes: int, epochs: int):
    """Article 2: everything trains; SGD lr 0.001, momentum 0.9, batch 100."""
    train = torch.utils.data.DataLoader(train.dataset, batch_size=100, shuffle=True)
    return train, {0: lambda: plain_optimizer(model, 1e-3)}


def article_mlp_adam(model: nn.Module, train, classes: int, epochs: int):
    """Article 3: frozen backbone, MLP head (:func:`mlp_head`), Adam lr 0.001, batch 32
    (the article: VGG-16)."""
    return train, {0: lambda: mlp_head(model, classes)}


ARTICLES = {
    BASELINE: article_fc_then_layer4,
    "article: full fine-tune": article_full,
    "article: MLP head + Adam": article_mlp_adam,
}


def article_rows(weights: Path, data: Path, size: int, epochs: int, seed: int) -> list[Row]:
    """The seed articles' loops (:data:`ARTICLES`) on resnet18, with the articles' own
    optimizers and learning rates, ``model.train()`` on the whole model (so frozen
    BatchNorm statistics drift, as in the articles) and validation after every epoch;
    timed from building the loaders and model to the last validation."""
    rows = []
    for label, article in ARTICLES.items():
        start = time.perf_counter()
        train, val = plain_loaders(data, size)
        classes = len(train.dataset.classes)
        model = plain_model(weights, classes, seed)
        train, phases = article(model, train, classes, epochs)
        best, final = plain_epochs(model, (train, val), phases, epochs)
        rows.append(Row(label, best, final, time.perf_counter() - start))
    return rows


def task_rows(
    weights: Path, data: Path, size: int, epochs: int, seed: int, auto: bool
) -> list[Row]:
    """One source and seed's rows of a task: tlplug's default, its schedules, ``--schedule
    auto`` when asked for, the articles."""
    usable, skipped = schedule_names()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        rows.append(done(tlplug_row("default", weights, data, out, size, epochs, seed=seed)))
        for name in usable + (["auto"] if auto else []):
            row = tlplug_row(name, weights, data, out, size, epochs, schedule=name, seed=seed)
            rows.append(done(row))
    if skipped:
        print(f"skipped schedules that need options: {', '.join(skipped)}")
    return rows + [done(row) for row in article_rows(weights, data, size, epochs, seed)]


def mean_rows(runs: list[list[Row]]) -> list[Row]:
    """Rows of several runs (sources x seeds) merged by recipe: mean best and final, summed
    seconds, the lowest final/best ratio of any one run in the note."""
    merged = []
    for recipe in dict.fromkeys(row.recipe for rows in runs for row in rows):
        same = [row for rows in runs for row in rows if row.recipe == recipe]
        scored = [row for row in same if row.best is not None and row.final is not None]
        best = statistics.mean(row.best for row in scored) if scored else None
        final = statistics.mean(row.final for row in scored) if scored else None
        worst = min((row.final / row.best for row in scored if row.best), default=None)
        note = f"{len(scored)} runs" + ("" if worst is None else f", worst final/best {worst:.2f}")
        notes = "; ".join(dict.fromkeys(row.note for row in same if row.note))
        merged.append(
            Row(
                recipe,
                best,
                final,
                sum(row.seconds for row in same),
                f"{note}{'; ' + notes if notes else ''}",
            )
        )
    return merged


def check_claims(task: TaskResult) -> list[str]:
    """The claims the bench exists to check, on one task's mean rows: each failing one as a
    line (none when all hold)."""
    rows = {row.recipe: row for row in task.rows if row.best is not None}
    failed = []
    schedules = [row for name, row in rows.items() if not name.startswith("article")]
    for row in schedules:
        if row.final < 0.9 * row.best:
            failed.append(f"{row.recipe}: final {row.final:.4f} < 0.9 x best {row.best:.4f}")
    default = rows["default"].final
    probe = rows.get("linear-probe")
    if probe is not None and default < probe.final:
        failed.append(f"default final {default:.4f} < linear-probe {probe.final:.4f}")
    articles = [row.final for name, row in rows.items() if name.startswith("article")]
    if articles and default < max(articles):
        failed.append(f"default final {default:.4f} < best article loop {max(articles):.4f}")
    if "auto" in rows:
        chosen = rows["auto"].final
        named = [row.final for row in schedules if row.recipe not in ("auto", "default")]
        if chosen < max(named) - 0.01:
            failed.append(f"auto final {chosen:.4f} < best schedule {max(named):.4f} - 1 pt")
    return [f"{task.name}: {line}" for line in failed]


def done(row: Row) -> Row:
    """Print a finished row as progress, note the load average then, and return it."""
    row.load = os.getloadavg()[0]
    best = "-" if row.best is None else f"{row.best:.4f}"
    print(
        f"  done: {row.recipe}: best {best} in {row.seconds:.1f} s {row.note}".rstrip(), flush=True
    )
    return row


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    names = [task.name for task in TASKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", default=None, help=f"of {','.join(names)}; all (--quick: {QUICK_TASKS})"
    )
    parser.add_argument("--epochs", type=int, default=None, help="10; --quick: 2")
    parser.add_argument("--quick", action="store_true", help="tiny sets at 32 px: a smoke run")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlplug-bench-quality"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--sources", default=None, help=f"source weights as EPOCHSxSIZE; {SOURCES['full']}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="seeds every row runs with; 0,1,2")
    parser.add_argument(
        "--auto", action="store_true", help="add a --schedule auto row (a search per run: slow)"
    )
    args = parser.parse_args()
    args.tasks = (args.tasks or (QUICK_TASKS if args.quick else ",".join(names))).split(",")
    if unknown := sorted(set(args.tasks) - set(names)):
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(names)}")
    args.epochs = args.epochs or (2 if args.quick else 10)
    args.sources = (args.sources or SOURCES["quick" if args.quick else "full"]).split(",")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    return args


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    from importlib.metadata import version

    names = ("tlplug", "torch", "timm", "scikit-learn", "scikit-image")
    return {name: version(name) for name in names} | {"torch_threads": torch.get_num_threads()}


def main() -> None:
    """Build the tasks and weights, run every row of every task from every source and seed,
    print the means, check the claims and save them."""
    args = parse_args()
    mode = "quick" if args.quick else "full"
    sizes = TASK_SIZES[mode]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    weights = {source: pretrained_weights(args.cache_dir, mode, source) for source in args.sources}
    results = []
    for task in (t for t in TASKS if t.name in args.tasks):
        data = cached_tree(args.cache_dir, task.name, task.build, sizes)
        result = TaskResult(task.name, task.what, *image_counts(data))
        runs = []
        for source, path in weights.items():
            for seed in args.seeds:
                print(f"{task.name}: source {source}, seed {seed}", flush=True)
                runs.append(task_rows(path, data, sizes.size, args.epochs, seed, args.auto))
        result.rows = mean_rows(runs)
        print_task(result, args.epochs, sizes.size)
        results.append(result)
    print_summary(results)
    failed = [line for result in results for line in check_claims(result)]
    print("\nclaims: " + ("all hold" if not failed else "FAILED\n  " + "\n  ".join(failed)))
    if args.json_out:
        settings = {
            "mode": mode,
            "epochs": args.epochs,
            "img_size": sizes.size,
            "sources": {source: str(path) for source, path in weights.items()},
            "seeds": args.seeds,
            "claims_failed": failed,
            "versions": versions(),
        }
        write_json(args.json_out, results, settings)


if __name__ == "__main__":
    main()
