"""The console report: what a run prints, as a lifecycle plugin.

Every line a run prints while it trains is worded here, from what the hooks pass: the
run's config and data at the start, the stage and where its inputs come from, one line per
epoch, the outcome at the end. It runs after other plugins (``trylast``), so it prints what
they added. Quiet runs (``-q``) print nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tlplug import hookimpl
from tlplug.version import __version__


@hookimpl(trylast=True)
def tlplug_run_start(run) -> None:
    say, resolved, recipe = run.console.say, run.resolved, run.recipe
    backbone = resolved.backbone
    where = str(run.device)
    if run.world.parallel:  # a data-parallel run: its processes and each one's share
        share = resolved.batch_size // run.world.size
        where = f"{run.world.size} processes ({where}, {share} images each a step)"
    say(
        f"tlplug {__version__}: {recipe.backbone} ({backbone.weights}) on {where}, "
        f"{resolved.img_size}px"
    )
    if backbone.weights_report:
        say(f"weights {recipe.weights}: {backbone.weights_report}")
    for line in _data_lines(run):
        say(line)
    groups = ", ".join(f"{name} {params:,}" for name, params in resolved.groups)
    say(f"groups: {groups}")
    say(
        f"schedule {recipe.schedule}: "
        + "; ".join(f"epoch {s.start + 1}: {s.name}" for s in run.plan)
    )
    teacher = resolved.details.get("teacher")
    if teacher:
        loss = resolved.details["distill_loss"]
        options = ", ".join(f"{k}={v}" for k, v in loss["options"].items())
        say(
            f"teacher: {teacher['run']} ({teacher['backbone']}, {teacher['params']:,} "
            f"parameters, {teacher['img_size']}px); distillation loss {loss['name']} ({options})"
        )
    say(f"run directory: {run.run_dir}")
    for line in resolved.details.get("warnings", []):
        say(f"warning: {line}")
    if run.epoch:
        say(f"resuming after epoch {run.epoch} of {recipe.epochs}")
    extended = run.config.get("extended", [])
    if run.epoch and extended and extended[-1]["after_epoch"] == run.epoch:
        last = extended[-1]
        say(
            f"extending the run from {last['from_epochs']} to {last['to_epochs']} epochs: the "
            f"schedule and the LR schedule now span {last['to_epochs']} epochs; continuing "
            f"from {last['from']}"
        )
    augmentation = resolved.details.get("augmentation")
    if augmentation and (augmentation["batched"] or augmentation["per_image"]):
        say(_augmentation_line(augmentation))
    decoded = resolved.decoded_images
    if decoded["kept"]:
        say(f"images are decoded once and kept ({decoded['bytes'] / 2**20:.0f} MiB)")
    else:
        say(
            f"decoded-image cache off: the pixels would take {decoded['bytes'] / 2**30:.1f} "
            "GiB, more than a quarter of this machine's memory; images are decoded every "
            "epoch"
        )


def _augmentation_line(record: dict) -> str:
    """Where the image augmentations run, from config.json's record of it."""
    parts = []
    if record["batched"]:
        parts.append(f"{', '.join(record['batched'])} batched on the device")
    if record["per_image"]:
        parts.append(f"{', '.join(record['per_image'])} per image in the loader")
    whole = "; crops from the whole image" if record["whole_image"] else ""
    return f"augmentation: {'; '.join(parts)} ({record['why']}){whole}"


def _data_lines(run) -> list[str]:
    splits, recipe = run.data, run.recipe
    test = f" / {len(splits.test)} test" if splits.test is not None else ""
    lines = [
        f"data: {len(splits.train)} train / {len(splits.val)} val{test} images, "
        f"{len(splits.classes)} classes"
    ]
    train, val = Counter(splits.train.labels), Counter(splits.val.labels)
    lines.append(
        "per class (train/val): "
        + ", ".join(f"{name} {train[i]}/{val[i]}" for i, name in enumerate(splits.classes))
    )
    most, least = max(train.values()), min(train.values())
    if most >= 3 * least and recipe.balance == "off":
        lines.append(
            f"classes are imbalanced ({most} vs {least} training images); "
            "--balance sampler or --balance loss evens them out"
        )
    lines += [f"warning: {line}" for line in splits.warnings]
    if splits.skipped:
        first = splits.skipped[0]
        lines.append(
            f"warning: skipped {len(splits.skipped)} file(s) that are not readable images "
            f"(listed in summary.json), e.g. {first.path}: {first.reason}"
        )
    return lines


@hookimpl(trylast=True)
def tlplug_stage_start(run, stage) -> None:
    from tlplug.train.optimizer import stage_lrs

    parts = [", ".join(stage.trainable)] if stage.trainable else []
    if stage.biases:
        parts.append(f"the biases of {len(stage.biases)} groups")
    params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    lrs = stage_lrs(run.optimizer, run.model.group_names(), stage)
    rates = ", ".join(f"{name} {lr:.2e}" for name, lr in lrs.items())
    scale = f", LR x{stage.lr_scale:g}" if stage.lr_scale != 1 else ""
    start = "continuing stage" if run.epoch - 1 > stage.start else "stage"
    run.console.say(
        f"{start} {run.stage + 1}/{len(run.plan)} '{stage.name}' from epoch {run.epoch}: "
        f"training {' and '.join(parts)} ({params:,} parameters); starting lr {rates}{scale}; "
        f"BatchNorm of frozen groups: {run.recipe.bn_policy} (--bn-policy)"
    )
    line = source_line(run.source)
    if line:
        run.console.say_once(line)


def source_line(source) -> str:
    """What the console says of a stage's :class:`~tlplug.run.Source`; "" for nothing."""
    if source.cache is None:
        return ""
    what = "feature cache" if source.cache == "features" else "frozen-prefix cache"
    names = ", ".join(source.names)
    if source.used and source.cache == "features":
        without = f" (without {names})" if names else ""
        over = "the data"
        if source.views:
            drawn = ", ".join(source.drawn)
            kind = "every outcome of " if source.exact else ""
            views = f"{source.views} augmented view{'s' * (source.views > 1)}"
            over = f"{views} ({kind}{drawn}) of the data"
        stepped = ""
        if source.stepped:
            stepped = (
                f"; the head trains epoch by epoch, not by the converged probe: regularizer "
                f"{', '.join(source.stepped)} adds to every step's loss"
            )
        return (
            f"feature cache on{without}: the backbone runs once over {over} and the head "
            f"trains on its features{stepped}"
        )
    if source.used:
        return (
            f"frozen-prefix cache on: the backbone up to {source.cut} runs once over the "
            "data; each step runs only the layers above it"
        )
    return f"{what} off" + {
        "off": " (--cache-features off)",
        "bn-train": ": with --bn-policy train the frozen layers' BatchNorm statistics change "
        "every batch",
        "regularizer": f": regularizer {names} needs the images",
        "augmentation": f": random augmentation ({names}) changes the images every epoch; "
        "--cache-features on caches the un-augmented images",
        "no-cut": ": no cut below the trainable groups gives the network's own output when "
        "replayed",
    }.get(source.reason, "")


@hookimpl(trylast=True)
def tlplug_epoch_end(run, record) -> None:
    before = run.history[-1]["skipped_nonfinite"] if run.history else 0
    if record["skipped_nonfinite"] > before:
        run.console.say(
            f"skipped {record['skipped_nonfinite'] - before} step(s) of epoch "
            f"{record['epoch']} with a non-finite loss ({record['skipped_nonfinite']} of "
            f"{run.recipe.skip_nonfinite} allowed by --skip-nonfinite)"
        )
    if "probe" in record:
        fit = record["probe"]
        run.console.say(
            f"linear head fit to convergence ({fit['iterations']} L-BFGS iterations, "
            f"{fit['seconds']:.1f}s): L2 strength {fit['l2']:g}, chosen by accuracy "
            f"{fit['held_out_acc']:.4f} on a fifth of the training images held out"
        )
    run.console.say(epoch_line(record, run.recipe.epochs))
    if record.get("stopped_early"):
        run.console.say(
            f"stopping early: no better validation for {run.recipe.patience} validations "
            f"(--patience {run.recipe.patience})"
        )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's line: stage, losses, accuracy (``*`` marks a new best), LR, speed."""
    lrs = sorted(set(record["lr"].values()))
    lr = f"{lrs[0]:.2e}" if len(lrs) == 1 else f"{lrs[0]:.2e}..{lrs[-1]:.2e}"
    parts = [
        f"epoch {record['epoch']}/{epochs} [{record['stage_name']}]",
        f"train_loss {record['train_loss']:.4f}",
    ]
    if record["val_acc"] is None:
        parts.append("(no validation)")
    else:
        best = record.get("best_source") if record.get("is_best") else None
        parts.append(
            f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f}"
            + (" *" if best == "model" else "")
        )
        if "ema_val_acc" in record:
            parts.append(
                f"ema_val_acc {record['ema_val_acc']:.4f}" + (" *" if best == "ema" else "")
            )
    parts.append(f"lr now {lr} {record['seconds']:.1f}s {record['images_per_s']:.0f} img/s")
    if record["peak_memory_mb"]:
        parts.append(f"peak {record['peak_memory_mb']:.0f} MiB")
    return " ".join(parts)


@hookimpl(trylast=True)
def tlplug_run_end(run, summary) -> None:
    say = run.console.say
    if "test_acc" in summary:
        say(f"test_acc {summary['test_acc']:.4f} ({summary['num_test']} test images, best weights)")
    more = len(summary["skipped_files"]) - len(run.skipped)
    if more > 0:
        say(
            f"{more} more image(s) failed to decode while training and were replaced by "
            "another image of their class; see skipped_files in summary.json"
        )
    if summary["best_val_acc"] is None:
        best = f"no validation; the weights of epoch {summary['best_epoch']} are kept"
    else:
        source = " (weight average)" if summary.get("best_source") == "ema" else ""
        best = (
            f"best val_acc {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']}{source}"
        )
    say(f"{best}; run saved in {run.run_dir}")
    say(
        f"predict with: tlplug predict {run.run_dir} IMAGE...; evaluate with: tlplug eval "
        f"{run.run_dir}"
    )
