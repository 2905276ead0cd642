"""The ``tlplug`` command: run, predict, plugins, list, groups, augment-preview.

Every error a user can cause ends as one line on stderr and a non-zero exit status;
``TLPLUG_DEBUG=1`` shows the traceback of an unexpected one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import attrs
import click

from tlplug.errors import OptionError, TlplugError, one_line
from tlplug.options import parse_assignments
from tlplug.recipe import Recipe
from tlplug.registry import KINDS

_DEFAULTS = {f.name: f.default for f in attrs.fields(Recipe)}


def _default(name: str) -> str:
    value = _DEFAULTS[name]
    if isinstance(value, attrs.Factory):
        value = value.factory()
    if isinstance(value, tuple):
        value = ",".join(value) or "none"
    return f" [default: {value}]"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlplug")
def cli() -> None:
    """Fine-tune pretrained image classifiers from pluggable strategies."""


@cli.command()
@click.option(
    "--data",
    help="Image folder (train/ + val/ [+ test/], or class folders), a CSV manifest "
    "(path,label[,split]), or SOURCE:LOCATION for a data-source plugin. "
    "[default: the built-in synthetic set]",
)
@click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="Option of the data source.")
@click.option(
    "--backbone",
    help="PROVIDER:NAME, e.g. timm:resnet50 or torchvision:vit_b_16." + _default("backbone"),
)
@click.option(
    "--backbone-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the backbone provider (repeatable).",
)
@click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Start from the provider's pretrained weights. [default: pretrained]",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Backbone weights file (.safetensors, or a state-dict .pth/.pt).",
)
@click.option("--head", help="Classification head." + _default("head"))
@click.option(
    "--head-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the head, e.g. hidden=4096,4096.",
)
@click.option("--schedule", help="Freeze schedule." + _default("schedule"))
@click.option(
    "--schedule-opt",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option of the schedule, e.g. epochs_per_stage=2.",
)
@click.option("--lr-schedule", help="Learning-rate schedule." + _default("lr_schedule"))
@click.option(
    "--lr-schedule-opt", multiple=True, metavar="KEY=VALUE", help="Option of the LR schedule."
)
@click.option(
    "--augment",
    multiple=True,
    help="Training augmentation, repeatable; they run in a fixed order (crops, flips, colour, "
    "then erasing, then mixup/cutmix), recorded in config.json; 'none' for none."
    + _default("augment"),
)
@click.option(
    "--augment-opt",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="Option of an augmentation, e.g. crop.scale=0.5,1.",
)
@click.option(
    "--adapter", help="Adapter added to the backbone, e.g. lora (from a plugin). [default: none]"
)
@click.option("--adapter-opt", multiple=True, metavar="KEY=VALUE", help="Option of the adapter.")
@click.option(
    "--regularizer",
    multiple=True,
    help="Loss regularizer, repeatable (from a plugin, e.g. l2-sp). [default: none]",
)
@click.option(
    "--regularizer-opt",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="Option of a regularizer, e.g. l2-sp.alpha=0.01.",
)
@click.option(
    "--label-smoothing",
    type=float,
    help="Label smoothing of the cross-entropy loss." + _default("label_smoothing"),
)
@click.option(
    "--balance",
    type=click.Choice(["off", "sampler", "loss"]),
    help="Class imbalance: draw classes equally often (sampler) or weight the loss by "
    "inverse class frequency (loss)." + _default("balance"),
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adam", "adamw"]),
    help="Optimizer." + _default("optimizer"),
)
@click.option("--lr", type=float, help="Base learning rate." + _default("lr"))
@click.option(
    "--lr-decay",
    type=float,
    help="Layer-wise LR decay G: group i below the head trains at lr x G^i.",
)
@click.option(
    "--lr-mult",
    metavar="M,M,...",
    help="LR multiplier per group, stem to head (see 'tlplug groups BACKBONE').",
)
@click.option(
    "--bn-policy",
    type=click.Choice(["frozen", "eval", "train"]),
    help="BatchNorm of frozen groups: frozen (eval mode, statistics kept), eval (every "
    "BatchNorm in eval mode) or train (statistics follow the data)." + _default("bn_policy"),
)
@click.option(
    "--max-groups",
    type=int,
    help="Merge the backbone's layer groups into at most this many (stem included).",
)
@click.option(
    "--weight-decay", type=float, help="Weight decay. [default: sgd 5e-4, adam 0, adamw 0.01]"
)
@click.option(
    "--decay-norm-bias",
    is_flag=True,
    default=None,
    help="Apply weight decay to biases and norm parameters too (off by default).",
)
@click.option("--momentum", type=float, help="SGD momentum." + _default("momentum"))
@click.option("--epochs", type=int, help="Epochs to train." + _default("epochs"))
@click.option(
    "--val-every",
    type=int,
    metavar="N",
    help="Validate (and keep the best weights) every N epochs and after the last."
    + _default("val_every"),
)
@click.option("--batch-size", type=int, help="Images per batch." + _default("batch_size"))
@click.option("--img-size", type=int, help="Input size in pixels. [default: the backbone's]")
@click.option("--seed", type=int, help="Random seed." + _default("seed"))
@click.option("--device", help="auto, cpu or cuda." + _default("device"))
@click.option(
    "--workers",
    type=int,
    help="Data loader processes. [default: GPU cores - 1 up to 8; CPU 0 up to 4 cores, "
    "then a quarter of them up to 4]",
)
@click.option(
    "--val-split",
    type=float,
    help="Fraction held out for validation when DATA has no val/ folder. [default: 0.2]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run directory. [default: runs/<time>-<backbone>]",
)
@click.option(
    "--cache-features",
    type=click.Choice(["auto", "on", "off"]),
    help="Train the head on backbone features computed once while only the head trains: "
    "auto without random augmentation, on with it (un-augmented features)."
    + _default("cache_features"),
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
    help="Autocast precision; auto is bf16 where the CPU or GPU computes it natively."
    + _default("precision"),
)
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="Channels-last memory layout. [default: on for convnets]",
)
@click.option(
    "--compile",
    is_flag=True,
    default=None,
    help="Compile the backbone's training forward pass with torch.compile. The first step "
    "of each stage waits for compilation; measure before relying on it.",
)
@click.option(
    "--skip-nonfinite",
    type=int,
    help="Batches with a NaN or infinite loss to step over before stopping. [default: 0]",
)
@click.option(
    "--auto-batch-size",
    is_flag=True,
    default=None,
    help="Halve --batch-size until a training step fits in memory.",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    metavar="RUN_DIR",
    help="Continue the interrupted run in RUN_DIR with its own recipe and data.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing while training.")
def run(data, out, overwrite, resume, quiet, **options) -> None:
    """Fine-tune a backbone on DATA and write a run directory."""
    from tlplug.engine import Engine

    recipe = _recipe_from_cli(options)
    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in recipe] + [
            flag for flag, value in (("--data", data), ("--out", out), ("--overwrite", overwrite))
            if value
        ]  # fmt: skip
        if given:
            raise OptionError(
                f"--resume continues {resume} with the recipe and data in its config.json; "
                f"drop {', '.join(given)}"
            )
        Engine.resume(resume, quiet=quiet)
        return
    engine = Engine.from_plugins(**recipe)
    engine.fit(data, out=out, overwrite=overwrite, quiet=quiet)


def _nested(given, flag: str) -> dict[str, dict[str, str]]:
    """Parse ``NAME.KEY=VALUE`` assignments into ``{NAME: {KEY: VALUE}}``."""
    nested: dict[str, dict[str, str]] = {}
    for key, value in parse_assignments(given, flag).items():
        name, sep, option = key.rpartition(".")
        if not sep or not name:
            raise OptionError(f"{flag} expects NAME.KEY=VALUE, got {key + '=' + value!r}")
        nested.setdefault(name, {})[option] = value
    return nested


def _recipe_from_cli(options: dict) -> dict:
    """Turn click's option values into recipe keyword arguments (unset ones left out)."""
    recipe = {}
    for kind in ("backbone", "head", "schedule", "lr_schedule", "adapter", "data"):
        flag = f"--{kind.replace('_', '-')}-opt"
        given = options.pop(f"{kind}_opt")
        if given:
            recipe[f"{kind}_opts"] = parse_assignments(given, flag)
    for kind in ("augment", "regularizer"):
        names, given = options.pop(kind), options.pop(f"{kind}_opt")
        if names:
            recipe[kind] = () if list(names) == ["none"] else tuple(names)
        if given:
            recipe[f"{kind}_opts"] = _nested(given, f"--{kind}-opt")
    recipe.update({k: v for k, v in options.items() if v is not None})
    return recipe


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Classes to show per image.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
def predict(run_dir, images, topk, as_json, device) -> None:
    """Classify IMAGES (files or folders) with the model of RUN_DIR."""
    from tlplug.data.folders import list_images
    from tlplug.engine import Engine

    files: list[Path] = []
    for path in images:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise TlplugError(f"folder {path} holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise TlplugError(f"image {path} does not exist")
    classifier = Engine.load(run_dir, device=device)
    predictions = classifier.predict(files, topk=topk)
    if as_json:
        click.echo(json.dumps([p.to_json() for p in predictions], indent=2))
        return
    for p in predictions:
        top = "  ".join(f"{name} {prob:.3f}" for name, prob in p.top)
        click.echo(f"{p.source}: {top}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins(as_json) -> None:
    """List every plugin: distribution, version, status and what it registers."""
    from tlplug.plugins import PluginHost

    infos = PluginHost().all_infos()
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    for info in infos:
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name} ({info.distribution}{version}) {info.status}")
        if info.error:
            click.echo(f"    error: {info.error}")
        for kind, names in info.registers.items():
            click.echo(f"    {kind}: {', '.join(names)}")


@cli.command()
@click.argument("backbone")
@click.option("--backbone-opt", multiple=True, metavar="KEY=VALUE", help="Provider option.")
@click.option("--img-size", type=int, help="Input size, for architectures that need one.")
@click.option("--max-groups", type=int, help="Merge the groups into at most this many.")
def groups(backbone, backbone_opt, img_size, max_groups) -> None:
    """Show the layer groups of BACKBONE, stem to top, with their parameter counts."""
    from tlplug.build import build_backbone
    from tlplug.engine import Engine
    from tlplug.model import count_params

    engine = Engine.from_plugins(
        backbone=backbone,
        backbone_opts=parse_assignments(backbone_opt, "--backbone-opt"),
        pretrained=False,
        img_size=img_size,
        max_groups=max_groups,
    )
    built, _ = build_backbone(engine.parts.provider, engine.recipe)
    params = dict(built.module.named_parameters())
    for group in built.groups:
        count = count_params([params[name] for name in group.params])
        click.echo(f"{group.name:<32} {count:>12,}")
    click.echo(f"{'head':<32} {'(--head)':>12}")


@cli.command(name="list")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.argument("pattern", required=False)
def list_(kind, pattern) -> None:
    """List registered names of KIND, filtered by a shell-style PATTERN ('timm:*convnext*')."""
    from tlplug.plugins import PluginHost

    registry = PluginHost().registry(kind)
    if kind != "backbones":
        for strategy in registry.strategies(pattern):
            options = ", ".join(o.describe() for o in strategy.options.values())
            click.echo(f"{strategy.name:<16} {strategy.description}")
            if options:
                click.echo(f"{'':<16}   options: {options}")
        return
    provider_pattern, sep, model_pattern = (pattern or "*").rpartition(":")
    if not sep:
        provider_pattern, model_pattern = "*", pattern or "*"
    shown = 0
    for strategy in registry.strategies(provider_pattern or "*"):
        provider = strategy.factory
        for model in provider.list_models(model_pattern):
            click.echo(f"{strategy.name}:{model:<40} {provider.describe(model)}")
            shown += 1
    if not shown:
        raise TlplugError(
            f"no backbone matches '{pattern}'; try a wider pattern such as 'timm:*net*'"
        )


@cli.command(name="augment-preview")
@click.option("--data", help="Training data, as for 'tlplug run'. [default: the synthetic set]")
@click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="Option of the data source.")
@click.option("--val-split", type=float, help="Validation share, as for 'tlplug run'.")
@click.option(
    "--augment",
    multiple=True,
    help="Training augmentation, repeatable; 'none' for none." + _default("augment"),
)
@click.option(
    "--augment-opt",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="Option of an augmentation, e.g. mixup.alpha=0.4.",
)
@click.option("--img-size", type=int, help="Input size in pixels. [default: the backbone's]")
@click.option("--backbone", help="Whose preprocessing to use." + _default("backbone"))
@click.option(
    "--count", type=click.IntRange(min=1), default=16, show_default=True, help="Images in the grid."
)
@click.option("--seed", type=int, help="Random seed, as for 'tlplug run'." + _default("seed"))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def augment_preview(data, out, count, overwrite, **options) -> None:
    """Write a PNG grid of augmented training images: what the model will see."""
    from tlplug.engine import Engine
    from tlplug.preview import write_preview

    augment = options.pop("augment")
    recipe = {
        "augment_opts": _nested(options.pop("augment_opt"), "--augment-opt"),
        "data_opts": parse_assignments(options.pop("data_opt"), "--data-opt"),
        **{k: v for k, v in options.items() if v is not None},
    }
    if augment:
        recipe["augment"] = () if list(augment) == ["none"] else tuple(augment)
    engine = Engine.from_plugins(**recipe, pretrained=False)
    preview = write_preview(engine, out, data, count=count, overwrite=overwrite)
    click.echo(preview.summary())
    labels = preview.labels()
    for row in range(0, count, preview.columns):
        click.echo("  " + " | ".join(labels[row : row + preview.columns]))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every error into one line and an exit status."""
    try:
        cli.main(args=argv, prog_name="tlplug", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tlplug"
        click.echo(f"Error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except TlplugError as exc:
        click.echo(f"Error: {one_line(exc)}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, ValueError) and "null byte" in str(exc):  # from click's path check
            click.echo("Error: an argument contains a NUL byte; paths cannot hold one", err=True)
            sys.exit(2)
        if os.environ.get("TLPLUG_DEBUG"):
            raise
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {one_line(exc)} "
            "(set TLPLUG_DEBUG=1 to see the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)
