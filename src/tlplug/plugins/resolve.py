"""Turning a recipe into parts: named strategies resolved, then the model assembled.

Resolution happens when an engine is made, so an unknown name or option fails before any
data is read; it reads every kind's row (:mod:`tlplug.plugins.kinds`), so a new kind resolves with
no code here. Building happens per run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.data.sources import NoImages, Splits, check_splits, split_data_spec
from tlplug.errors import OptionError, TlplugError, UnknownNameError, flag, one_line
from tlplug.model.backbone import Backbone, check_groups, fold_norm_groups, merge_groups
from tlplug.model.transfer import TransferModel
from tlplug.plugins.host import PluginHost
from tlplug.plugins.kinds import Kind, split_backbone
from tlplug.plugins.options import resolve_options, with_defaults
from tlplug.plugins.registry import Registry, Strategy
from tlplug.recipe import Recipe
from tlplug.rundir.weights import LoadReport, backbone_part, load_into, read_state_dict
from tlplug.train.stages import Stage, check_plan


@attrs.frozen
class Choice:
    """A strategy picked by name, with its checked, typed options (defaults included)."""

    strategy: Strategy
    options: dict[str, Any]

    @property
    def name(self) -> str:
        """The name the strategy was chosen by (``"gradual"``)."""
        return self.strategy.name

    @property
    def plugin(self) -> str:
        """The plugin that registered the strategy."""
        return self.strategy.plugin

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the choice for config.json."""
        return {"name": self.name, "plugin": self.plugin, "options": self.options}


@attrs.frozen
class Parts(Mapping):
    """Every strategy of a recipe, resolved, as a read-only mapping from each kind's key
    (``"heads"``, ``"gates"`` for a plugin's kind) to a :class:`Choice`, a tuple of them for
    a kind of many (``"augmentations"``, in the order they run), or None for an optional
    kind nothing chose (``"adapters"``). A kind is also found by its recipe field
    (``parts["head"]``, ``parts["gate"]``, the name config.json records it under) and as
    an attribute with underscores (``parts.head``, ``parts.lr_schedule``);
    ``parts.provider`` is the backbone provider's choice."""

    choices: Mapping[str, Any]
    model_name: str  # the backbone's model, after the provider's name
    names: Mapping[str, str] = attrs.field(factory=dict)  # other names of each kind's key

    def __getitem__(self, key: str) -> Any:
        return self.choices[self.names.get(key, key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("choices", "names", "model_name"):
            raise AttributeError(name)
        key = self.names.get(name)
        if key is None:
            raise AttributeError(name)
        return self.choices[key]

    def describe(self) -> dict[str, Any]:
        """JSON-ready: each kind's choice (:meth:`Choice.describe`), by kind key."""
        return {
            key: [c.describe() for c in chosen]
            if isinstance(chosen, tuple)
            else chosen.describe()
            if chosen is not None
            else None
            for key, chosen in self.choices.items()
        }


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
    what = f"{strategy.kind.noun} '{name}'"
    given = resolve_options(strategy.target, options, what)
    return Choice(strategy, with_defaults(strategy.target, given))


def resolve(plugins: PluginHost, recipe: Recipe) -> Parts:
    """Look up every name in ``recipe`` and check every strategy option."""
    choices: dict[str, Any] = {}
    for key, kind in plugins.kinds.items():
        if kind.scope != "recipe":
            continue
        value, options = getattr(recipe, kind.field), getattr(recipe, kind.options_field)
        if kind.many:
            unknown = set(options) - set(value)
            if unknown:
                raise OptionError(
                    f"{kind.options_flag} names {', '.join(sorted(unknown))}, which is not in "
                    f"{kind.flag}"
                )
            chosen = [choose(plugins, key, name, options.get(name, {})) for name in value]
            if kind.order is not None:
                chosen.sort(key=lambda choice, k=kind: k.order(choice.strategy))
            choices[key] = tuple(chosen)
            continue
        value = value if value is not None else implied(key, choices)
        if value is None:
            if options:
                raise OptionError(f"{kind.options_flag} needs {kind.flag}")
            choices[key] = None
            continue
        choices[key] = choose(plugins, key, kind.name_of(value), options)
    names = {"provider": "backbones"}
    for key, kind in plugins.kinds.items():
        names |= {kind.field: key, key.replace("-", "_"): key}
    return Parts(choices, split_backbone(recipe.backbone)[1], names)


def implied(key: str, choices: Mapping[str, Any]) -> str | None:
    """The name a kind gets when the recipe names none: a schedule may imply its adapter
    (its factory's ``adapter`` attribute, as ``lora`` does)."""
    schedule = choices.get("schedules")
    if key != "adapters" or schedule is None:
        return None
    name = getattr(schedule.strategy.factory, "adapter", None)
    if name is not None and not isinstance(name, str):
        raise TlplugError(
            f"schedule '{schedule.strategy.name}' of plugin '{schedule.strategy.plugin}' "
            f"names its adapter as {name!r}; it must be a string"
        )
    return name


def resolved_recipe(recipe: Recipe, parts: Parts, kinds: Mapping[str, Kind]) -> Recipe:
    """``recipe`` with every chosen strategy's options as resolved (defaults included) and
    the names a kind was given by implication, so config.json rebuilds the same run."""
    changes: dict[str, Any] = {}
    for key, kind in kinds.items():
        if kind.scope != "recipe" or parts[key] is None:
            continue
        if kind.many:
            changes[kind.options_field] = {c.strategy.name: c.options for c in parts[key]}
            continue
        changes[kind.options_field] = parts[key].options
        if getattr(recipe, kind.field) is None:
            changes[kind.field] = parts[key].strategy.name
    return attrs.evolve(recipe, **changes)


def record_choices(resolved: dict[str, Any], parts: Parts, kinds: Mapping[str, Kind]) -> None:
    """Write each kind's resolved choice where its row says into config.json's
    ``resolved`` part."""
    for key, kind in kinds.items():
        if kind.scope != "recipe":
            continue
        chosen = parts[key]
        if kind.many:
            value: Any = [choice.describe() for choice in chosen]
        else:
            value = chosen.describe() if chosen is not None else None
        *path, last = kind.record_path
        place = resolved
        for step in path:
            place = place.setdefault(step, {})
        place[last] = value


def load_data(plugins: PluginHost, data: str | os.PathLike | None, recipe: Recipe) -> Splits:
    """Read ``data`` with the source it names and check what the source returns."""
    registry = plugins.registry("data-sources")
    name, location = split_data_spec(data, registry.names())
    choice = choose(plugins, "data-sources", name, recipe.data_opts)
    splits = choice.strategy.factory(location, recipe.seed, recipe.val_split, **choice.options)
    if not isinstance(splits, Splits):
        raise TlplugError(
            f"data source '{name}' (plugin '{choice.strategy.plugin}') returned "
            f"{type(splits).__name__}, not tlplug.Splits"
        )
    if recipe.val_split == 0:  # no validation: whatever the source holds out stays out
        if len(splits.val):
            note = f"{len(splits.val)} validation images left out: {flag('val_split', 0)}"
            splits = attrs.evolve(splits, warnings=(*splits.warnings, note))
        splits = attrs.evolve(splits, val=NoImages())
    check_splits(splits, name, validate=recipe.val_split != 0)
    if name in ("folder", "csv"):  # a path that reads the same from any working directory
        location = str(Path(location).resolve())
    location = splits.info.get("location", location)  # a source may say it more exactly
    info = {
        **splits.info,
        "source": name,
        "plugin": choice.strategy.plugin,
        "options": choice.options,
        "location": location,
    }
    return attrs.evolve(splits, info=info)


WILDCARDS = "*?["  # shell-style pattern characters


def matching_backbones(registry: Registry, pattern: str | None) -> list[tuple[Strategy, str]]:
    """The backbones ``tlplug list backbones PATTERN`` shows, as (provider, model name)
    pairs: ``PROVIDER:NAME`` matches providers by PROVIDER and their models by NAME, both
    shell-style (a provider also matches when PROVIDER is part of its name); a pattern
    without ``:`` matches NAME in every provider."""
    provider_pattern, sep, model_pattern = (pattern or "*").rpartition(":")
    if not sep:
        provider_pattern, model_pattern = "*", pattern or "*"
    return [
        (strategy, model)
        for strategy in registry.strategies(provider_pattern or "*")
        for model in strategy.factory.list_models(model_pattern)
    ]


def expand_backbone(registry: Registry, spec: str) -> list[str]:
    """``spec`` itself, or with wildcards in it, every ``PROVIDER:NAME`` it matches as
    :func:`matching_backbones` matches them (an error when none does)."""
    if not any(char in spec for char in WILDCARDS):
        return [spec]
    names = [f"{strategy.name}:{model}" for strategy, model in matching_backbones(registry, spec)]
    if not names:
        raise TlplugError(f"no backbone matches '{spec}'; try a wider pattern such as 'timm:*net*'")
    return names


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
            backbone.module,
            state,
            source=str(recipe.weights),
            classifier=backbone.classifier,
            partial=recipe.weights_partial,
        )
        backbone.weights = f"file {Path(recipe.weights).resolve()}"
        backbone.pretrained = True
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
        raise TlplugError(
            f"{name} cannot take {img_size}px images ({one_line(exc)[:160]}); "
            "try another --img-size"
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


def make_plan(schedule: Choice, groups: list[str], epochs: int) -> tuple[list[Stage], list[Stage]]:
    """Ask the schedule for its plan and check it; return the stages that start within the
    run, and every stage it planned (a gradual schedule may plan past the last epoch)."""
    what = f"schedule '{schedule.strategy.name}'"
    plan = schedule.strategy.factory(list(groups), epochs, **schedule.options)
    checked = check_plan(plan, groups, what)
    return [stage for stage in checked if stage.start < epochs], checked
