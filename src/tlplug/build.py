"""Turning a recipe into parts: named strategies resolved, then the model assembled.

Resolution happens when an engine is made, so an unknown name or option fails before any
data is read. Building happens per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.backbone import Backbone, check_groups, fold_norm_groups, merge_groups
from tlplug.errors import OptionError, TlplugError, UnknownNameError, one_line
from tlplug.model import TransferModel
from tlplug.options import resolve_options
from tlplug.plugins import PluginHost
from tlplug.recipe import Recipe
from tlplug.registry import Strategy, split_backbone
from tlplug.schedule import Stage, check_plan
from tlplug.weights import LoadReport, backbone_part, load_into, read_state_dict


@attrs.frozen
class Choice:
    """A strategy picked by name, with its checked, typed options."""

    strategy: Strategy
    options: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the choice for config.json."""
        return {"name": self.strategy.name, "plugin": self.strategy.plugin, "options": self.options}


@attrs.frozen
class Parts:
    """Every strategy of a recipe, resolved."""

    provider: Choice
    model_name: str
    head: Choice
    schedule: Choice
    lr_schedule: Choice
    augmentations: tuple[Choice, ...]  # in the order they run: by phase, order, then as given
    adapter: Choice | None = None
    regularizers: tuple[Choice, ...] = ()


def choose(plugins: PluginHost, kind: str, name: str, options: dict[str, Any]) -> Choice:
    """Look up the ``kind`` strategy called ``name`` and check ``options`` against it."""
    try:
        strategy = plugins.registry(kind).get(name)
    except UnknownNameError as exc:
        missing = plugins.not_loaded()
        if not missing:
            raise
        names = ", ".join(f"{i.name} ({i.status})" for i in missing)
        raise TlplugError(f"{exc}; not loaded: {names}, see 'tlplug plugins'") from None
    target = strategy.factory.create if kind == "backbones" else strategy.factory
    return Choice(strategy, resolve_options(target, options, f"{strategy.kind.noun} '{name}'"))


def resolve(plugins: PluginHost, recipe: Recipe) -> Parts:
    """Look up every name in ``recipe`` and check every strategy option."""
    provider_name, model_name = split_backbone(recipe.backbone)
    for flag, names, opts in (
        ("augment", recipe.augment, recipe.augment_opts),
        ("regularizer", recipe.regularizer, recipe.regularizer_opts),
    ):
        unknown = set(opts) - set(names)
        if unknown:
            raise OptionError(
                f"--{flag}-opt names {', '.join(sorted(unknown))}, which is not in --{flag}"
            )
    augmentations = [
        choose(plugins, "augmentations", name, recipe.augment_opts.get(name, {}))
        for name in recipe.augment
    ]
    schedule = choose(plugins, "schedules", recipe.schedule, recipe.schedule_opts)
    adapter = recipe.adapter or implied_adapter(schedule)
    if recipe.adapter_opts and not adapter:
        raise OptionError("--adapter-opt needs --adapter")
    return Parts(
        provider=choose(plugins, "backbones", provider_name, recipe.backbone_opts),
        model_name=model_name,
        head=choose(plugins, "heads", recipe.head, recipe.head_opts),
        schedule=schedule,
        lr_schedule=choose(plugins, "lr-schedules", recipe.lr_schedule, recipe.lr_schedule_opts),
        augmentations=tuple(sorted(augmentations, key=augmentation_rank)),
        adapter=choose(plugins, "adapters", adapter, recipe.adapter_opts) if adapter else None,
        regularizers=tuple(
            choose(plugins, "regularizers", name, recipe.regularizer_opts.get(name, {}))
            for name in recipe.regularizer
        ),
    )


def implied_adapter(schedule: Choice) -> str | None:
    """The adapter a schedule needs (its factory's ``adapter`` attribute), if any."""
    name = getattr(schedule.strategy.factory, "adapter", None)
    if name is not None and not isinstance(name, str):
        raise TlplugError(
            f"schedule '{schedule.strategy.name}' of plugin '{schedule.strategy.plugin}' "
            f"names its adapter as {name!r}; it must be a string"
        )
    return name


PHASES = ("pixels", "tensor", "batch")


def augmentation_phase(choice: Choice) -> str:
    """Where an augmentation acts: ``pixels``, ``tensor`` or ``batch`` (see the hook)."""
    phase = getattr(choice.strategy.factory, "phase", "pixels")
    if phase not in PHASES:
        raise TlplugError(
            f"augmentation '{choice.strategy.name}' has phase {phase!r}; "
            f"plugin '{choice.strategy.plugin}' must use one of {', '.join(PHASES)}"
        )
    return phase


def augmentation_rank(choice: Choice) -> tuple[int, float]:
    """Sort key of an augmentation: its phase, then its ``order`` (default 50)."""
    order = getattr(choice.strategy.factory, "order", 50)
    return PHASES.index(augmentation_phase(choice)), float(order)


def build_backbone(provider: Choice, recipe: Recipe) -> tuple[Backbone, LoadReport | None]:
    """Create ``recipe.backbone`` with the chosen provider; load ``recipe.weights`` if given."""
    model_name = split_backbone(recipe.backbone)[1]
    pretrained = recipe.pretrained and not recipe.weights
    try:
        backbone = provider.strategy.factory.create(
            model_name, pretrained, recipe.img_size, **provider.options
        )
    except TlplugError:
        raise
    except Exception as exc:  # the library's own error, e.g. an input size it cannot take
        size = f" for {recipe.img_size}px input" if recipe.img_size else ""
        raise TlplugError(f"could not build {recipe.backbone}{size}: {one_line(exc)}") from None
    try:
        check_groups(backbone.module, backbone.groups)
    except ValueError as exc:
        raise TlplugError(
            f"provider '{provider.strategy.plugin}' gave bad layer groups for "
            f"{recipe.backbone}: {exc}"
        ) from None
    backbone.groups = fold_norm_groups(backbone.module, backbone.groups)
    if recipe.max_groups:
        backbone.groups = merge_groups(backbone.groups, recipe.max_groups)
    report = None
    if recipe.weights:
        state = backbone_part(read_state_dict(recipe.weights))
        report = load_into(
            backbone.module, state, source=str(recipe.weights), classifier=backbone.classifier
        )
        backbone.weights = f"file {Path(recipe.weights).resolve()}"
    return backbone, report


def probe(backbone: Backbone, img_size: int, name: str) -> None:
    """Run one tiny batch through the backbone to check it takes ``img_size`` images."""
    module = backbone.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, img_size, img_size))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TlplugError(
            f"{name} cannot take {img_size}px images ({reason}); try another --img-size"
        ) from None
    finally:
        module.train(was_training)
    if tuple(out.shape) != (1, backbone.num_features):
        raise TlplugError(
            f"{name} gives features of shape {tuple(out.shape)[1:]}, "
            f"not ({backbone.num_features},) as its provider says"
        )


def build_model(head: Choice, backbone: Backbone, num_classes: int) -> TransferModel:
    """Put the chosen head on ``backbone``."""
    module = head.strategy.factory(backbone.num_features, num_classes, **head.options)
    return TransferModel(backbone, module)


def make_plan(parts: Parts, groups: list[str], epochs: int) -> list[Stage]:
    """Ask the schedule for its plan, check it, and drop stages that start after the run."""
    what = f"schedule '{parts.schedule.strategy.name}'"
    plan = parts.schedule.strategy.factory(list(groups), epochs, **parts.schedule.options)
    checked = check_plan(plan, groups, what)
    return [stage for stage in checked if stage.start < epochs]
