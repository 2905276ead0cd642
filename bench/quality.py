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
- ``search``: ``tlplug search`` when this tlplug has it: the winner's final run on the
  same validation split as the other rows, its time (search and final run) also as a
  multiple of one full run (the median of the tlplug rows' seconds);
- the seed articles' loops in plain PyTorch (bench/common.py), with the articles' own
  optimizers and learning rates, adapted to resnet18 (see :func:`article_rows`).

Tasks come from real images shipped in pip packages (scikit-learn digits, scikit-image
photos), see quality_tasks.py. The "pretrained" weights are trained here on a source task
that shares no class and no photo with the downstream tasks, and cached. Seeds are fixed;
every number is one run in this one process. Seconds are wall clock; the "load" column is
the 1-minute load average when a row ended, to show when other work shared the CPU.
``--quick`` runs two tasks on tiny 32 px sets for 2 epochs: a smoke test, not results.

    python bench/quality.py [--tasks digits,texture] [--epochs 10] [--quick]
        [--cache-dir DIR] [--json-out results.json]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import subprocess
import sys
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
from tlplug.plugins import PluginHost

BACKBONE = "timm:resnet18"
TASK_SIZES = {"full": Sizes(train=60, val=40, few=12, size=64), "quick": Sizes(8, 8, 4, 32)}
SOURCE_SIZES = {"full": Sizes(train=120, val=30, few=0, size=64), "quick": Sizes(16, 8, 0, 32)}
PRETRAIN_EPOCHS = {"full": 8, "quick": 1}
QUICK_TASKS = "digits-fewshot,photo-id"  # one of each builder: --quick is a smoke run
Phases = dict[int, Callable[[], torch.optim.Optimizer]]  # epoch -> optimizer built then


def pretrained_weights(cache: Path, mode: str) -> Path:
    """Stand-in pretrained resnet18 weights: full training with tlplug on the source task
    (digits 0-4, patches of five grayscale photos), cached under ``cache``."""
    sizes = SOURCE_SIZES[mode]
    data = cached_tree(cache, "source", build_source, sizes)
    out = cache / f"pretrain-{data.name}-e{PRETRAIN_EPOCHS[mode]}"
    if (out / "model.safetensors").exists():
        return out / "model.safetensors"
    engine = Engine.from_plugins(
        entrypoints=False, backbone=BACKBONE, pretrained=False, schedule="full",
        epochs=PRETRAIN_EPOCHS[mode], img_size=sizes.size, augment=(), lr=2e-3,
    )  # fmt: skip
    result = engine.fit(data, out=out, overwrite=True, quiet=True)
    print(f"pretrained on the source task: val acc {result.final_val_acc:.4f} -> {out}")
    return out / "model.safetensors"


def schedule_names() -> tuple[list[str], list[str]]:
    """The registered schedules (built-ins only) that run without options, and the rest."""
    registry = PluginHost(entrypoints=False).registry("schedules")
    usable, skipped = [], []
    for name in registry.names():
        needs = any(option.required for option in registry.get(name).options.values())
        (skipped if needs else usable).append(name)
    return usable, skipped


def tlplug_row(label: str, weights: Path, data: Path, out: Path, size: int, epochs: int,
               **recipe) -> Row:  # fmt: skip
    """One tlplug run through the public API, timed from building the engine to the end."""
    start = time.perf_counter()
    engine = Engine.from_plugins(
        entrypoints=False, backbone=BACKBONE, weights=str(weights), img_size=size,
        epochs=epochs, **recipe,
    )  # fmt: skip
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
    torch.manual_seed(0)
    width = model.num_features
    model.fc = nn.Sequential(
        nn.Linear(width, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, classes),
    )  # fmt: skip
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


def article_rows(weights: Path, data: Path, size: int, epochs: int) -> list[Row]:
    """The seed articles' loops (:data:`ARTICLES`) on resnet18, with the articles' own
    optimizers and learning rates, ``model.train()`` on the whole model (so frozen
    BatchNorm statistics drift, as in the articles) and validation after every epoch;
    timed from building the loaders and model to the last validation."""
    rows = []
    for label, article in ARTICLES.items():
        start = time.perf_counter()
        torch.manual_seed(0)
        train, val = plain_loaders(data, size)
        classes = len(train.dataset.classes)
        model = plain_model(weights, classes)
        train, phases = article(model, train, classes, epochs)
        best, final = plain_epochs(model, (train, val), phases, epochs)
        rows.append(Row(label, best, final, time.perf_counter() - start))
    return rows


def task_rows(weights: Path, data: Path, size: int, epochs: int, search_budget: str) -> list[Row]:
    """Every row of one task: tlplug's default and schedules, search, the articles."""
    usable, skipped = schedule_names()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        rows.append(done(tlplug_row("default", weights, data, out, size, epochs)))
        for name in usable:
            rows.append(done(tlplug_row(name, weights, data, out, size, epochs, schedule=name)))
        if search_available():
            search = search_row(data, weights, size, epochs, search_budget, Path(tmp) / "search")
            one_run = statistics.median(row.seconds for row in rows)  # robust to a slow row
            rows.append(done(with_run_multiple(search, one_run)))
        else:
            print("search: not available in this tlplug")
    if skipped:
        print(f"skipped schedules that need options: {', '.join(skipped)}")
    return rows + [done(row) for row in article_rows(weights, data, size, epochs)]


def done(row: Row) -> Row:
    """Print a finished row as progress, note the load average then, and return it."""
    row.load = os.getloadavg()[0]
    best = "-" if row.best is None else f"{row.best:.4f}"
    print(
        f"  done: {row.recipe}: best {best} in {row.seconds:.1f} s {row.note}".rstrip(), flush=True
    )
    return row


@functools.cache
def search_available() -> bool:
    """Whether this tlplug has a ``tlplug search`` command (the form this bench calls)."""
    probe = [sys.executable, "-m", "tlplug", "search", "--help"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def search_row(data: Path, weights: Path, size: int, epochs: int, budget: str, out: Path) -> Row:
    """``tlplug search --data DIR --budget B --out DIR`` with the run options that fix the
    start, timed from start to end (search and the winner's final run). Its best and final
    accuracies are the winner's final run's on the real validation split (OUT/summary.json),
    comparable with the other rows; the note names the winner and the best held-out
    accuracy of the leaderboard (OUT/leaderboard.json or .csv)."""
    command = [
        sys.executable, "-m", "tlplug", "search", "--data", str(data), "--budget", budget,
        "--out", str(out), "--backbone", BACKBONE, "--weights", str(weights),
        "--img-size", str(size), "--epochs", str(epochs),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return Row("search", None, None, seconds, f"failed ({done.returncode}): {last}")
    summary = json.loads((out / "summary.json").read_text())
    winner = json.loads((out / "config.json").read_text()).get("search", {}).get("winner", {})
    held_out = leaderboard_best(out)
    note = (
        f"budget {budget}; winner {winner.get('schedule')} lr {winner.get('lr')}"
        f"{' lr-decay ' + str(winner['lr_decay']) if winner.get('lr_decay') else ''}; "
        f"held-out {'-' if held_out is None else f'{held_out:.4f}'}"
    )
    return Row("search", summary["best_val_acc"], summary["final_val_acc"], seconds, note)


def with_run_multiple(row: Row, run_seconds: float) -> Row:
    """``row`` with its time as a multiple of one full run (the median tlplug row's seconds)."""
    if run_seconds > 0:
        row.note = f"{row.note}; {row.seconds / run_seconds:.1f}x the time of one full run"
    return row


def leaderboard_best(out: Path) -> float | None:
    """The highest ``best_val_acc`` (or ``val_acc``) among a leaderboard's entries."""
    entries: list = []
    for file in sorted(out.glob("leaderboard.*")):
        if file.suffix == ".json":
            loaded = json.loads(file.read_text())
            entries = loaded if isinstance(loaded, list) else loaded.get("entries", [])
        elif file.suffix == ".csv":
            entries = list(csv.DictReader(file.open()))
    accs = [float(e.get("best_val_acc") or e.get("val_acc") or "nan") for e in entries]
    return max((a for a in accs if a == a), default=None)


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
        "--search-budget", default="auto", help="tlplug search --budget (auto, its default; 10m)"
    )
    args = parser.parse_args()
    args.tasks = (args.tasks or (QUICK_TASKS if args.quick else ",".join(names))).split(",")
    if unknown := sorted(set(args.tasks) - set(names)):
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(names)}")
    args.epochs = args.epochs or (2 if args.quick else 10)
    return args


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    from importlib.metadata import version

    names = ("tlplug", "torch", "timm", "scikit-learn", "scikit-image")
    return {name: version(name) for name in names} | {"torch_threads": torch.get_num_threads()}


def main() -> None:
    """Build the tasks and weights, run every row of every task, print and save them."""
    args = parse_args()
    mode = "quick" if args.quick else "full"
    sizes = TASK_SIZES[mode]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    weights = pretrained_weights(args.cache_dir, mode)
    results = []
    for task in (t for t in TASKS if t.name in args.tasks):
        data = cached_tree(args.cache_dir, task.name, task.build, sizes)
        result = TaskResult(task.name, task.what, *image_counts(data))
        result.rows = task_rows(weights, data, sizes.size, args.epochs, args.search_budget)
        print_task(result, args.epochs, sizes.size)
        results.append(result)
    print_summary(results)
    if args.json_out:
        settings = {
            "mode": mode, "epochs": args.epochs, "img_size": sizes.size, "weights": str(weights),
            "pretrain_epochs": PRETRAIN_EPOCHS[mode], "versions": versions(),
        }  # fmt: skip
        write_json(args.json_out, results, settings)


if __name__ == "__main__":
    main()
