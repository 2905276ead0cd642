"""Does a student learn more with a teacher? ``--teacher RUN`` against the same student
without one.

On quality-bench tasks (real images: scikit-learn digits, scikit-image photo patches), a
resnet18 teacher (the bench's stand-in pretrained weights, fine-tuned with the default
recipe) teaches a mobilenetv3_small_050 student (20x fewer parameters; its own stand-in
pretrained weights, trained here on the same source task). The student is fine-tuned with
the default recipe, alone and with ``--teacher`` (default distillation loss, then each
``--kd`` variant), over several seeds. Printed per task: best and final validation
accuracy (means over the seeds, and the worst seed), and seconds.

    python bench/distil.py [--tasks digits,texture] [--epochs 10] [--seeds 0,1,2]
        [--kd temperature=4,weight=0.9] [--plot docs/images/distillation.png]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from quality import TASK_SIZES, pretrained_weights
from quality_tasks import TASKS, cached_tree

from tlplug import Engine
from tlplug.plotting import new_figure, save_png

SIZE = 64
TEACHER = "timm:resnet18"
STUDENT = "timm:mobilenetv3_small_050"


def fine_tune(backbone: str, weights: Path, data: Path, out: Path, epochs: int, seed: int, **more):
    """A default-recipe run; its (best, final) validation accuracy and seconds."""
    started = time.perf_counter()
    result = Engine.from_plugins(
        entrypoints=False,
        backbone=backbone,
        weights=str(weights),
        pretrained=False,
        img_size=SIZE,
        epochs=epochs,
        seed=seed,
        workers=0,
        **more,
    ).fit(data, out=out, overwrite=True, quiet=True)
    return result.best_val_acc, result.final_val_acc, time.perf_counter() - started


def parse_options(text: str) -> dict[str, str]:
    """``"temperature=4,weight=0.9"`` as a dict."""
    return dict(part.split("=", 1) for part in text.split(",") if part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,texture")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kd", action="append", default=[], help="more --distill-loss-opt sets")
    parser.add_argument("--plot", type=Path, help="draw best and final accuracy to this PNG")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlplug-bench-quality"
    )
    args = parser.parse_args()
    tables = {}
    cache, seeds = args.cache_dir, [int(s) for s in args.seeds.split(",")]
    cache.mkdir(parents=True, exist_ok=True)
    teacher_start = pretrained_weights(cache, "full", "20x64")
    student_start = pretrained_weights(cache, "full", "8x64", STUDENT)
    variants = [("student + teacher (default kd)", {})]
    variants += [(f"student + teacher ({kd})", parse_options(kd)) for kd in args.kd]
    for task in (t for t in TASKS if t.name in args.tasks.split(",")):
        data = cached_tree(cache, task.name, task.build, TASK_SIZES["full"])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            teacher_run = tmp / "teacher"
            teacher = fine_tune(TEACHER, teacher_start, data, teacher_run, args.epochs, 0)
            rows = {"teacher (resnet18, seed 0)": [teacher]}
            for seed in seeds:
                rows.setdefault("student alone", []).append(
                    fine_tune(STUDENT, student_start, data, tmp / "alone", args.epochs, seed)
                )
                for label, options in variants:
                    rows.setdefault(label, []).append(
                        fine_tune(
                            STUDENT,
                            student_start,
                            data,
                            tmp / "taught",
                            args.epochs,
                            seed,
                            teacher=str(teacher_run),
                            distill_loss_opts=options,
                        )
                    )
        tables[task.name] = rows
        print(f"{task.name}: {task.what}; {STUDENT} student, {TEACHER} teacher, {SIZE} px")
        print(f"  {'':<36} {'best':>7} {'final':>7} {'worst final':>12} {'seconds':>8}")
        for label, runs in rows.items():
            best = statistics.mean(r[0] for r in runs)
            final = statistics.mean(r[1] for r in runs)
            worst = min(r[1] for r in runs)
            seconds = sum(r[2] for r in runs)
            print(f"  {label:<36} {best:7.4f} {final:7.4f} {worst:12.4f} {seconds:8.1f}")
    if args.plot:
        draw(tables, args.plot)


def draw(tables: dict[str, dict[str, list[tuple[float, float, float]]]], path: Path) -> None:
    """Bars of the mean best and final accuracy of every row of every task, with the
    seeds' final accuracies as dots."""
    figure = new_figure(5 * len(tables), 3.6, 110)
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    for ax, (task, rows) in zip(axes, tables.items(), strict=True):
        for index, runs in enumerate(rows.values()):
            best = statistics.mean(r[0] for r in runs)
            final = statistics.mean(r[1] for r in runs)
            ax.bar(index - 0.2, best, 0.4, color="#9ecae1", label="best" if not index else None)
            ax.bar(index + 0.2, final, 0.4, color="#3182bd", label="final" if not index else None)
            ax.plot([index + 0.2] * len(runs), [r[1] for r in runs], "k.", markersize=4)
        ax.set_xticks(range(len(rows)), [label.replace(" (", "\n(") for label in rows], fontsize=7)
        ax.set_ylim(max(0.0, min(min(r[1] for r in v) for v in rows.values()) - 0.1), 1.0)
        ax.set_title(f"{task}: validation accuracy", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    save_png(figure, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
