"""Name -> strategy registries, one per kind, filled by the plugins' registration hooks."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import attrs

from tlplug.errors import TlplugError, UnknownNameError
from tlplug.options import Option, options_of


@attrs.frozen
class Kind:
    """A kind of strategy: its registration hook, CLI flag and words for messages."""

    key: str  # plural, as in ``tlplug list heads``
    hook: str
    noun: str
    flag: str


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind("backbones", "tlplug_register_backbones", "backbone provider", "--backbone"),
        Kind("heads", "tlplug_register_heads", "head", "--head"),
        Kind("schedules", "tlplug_register_schedules", "schedule", "--schedule"),
        Kind("lr-schedules", "tlplug_register_lr_schedules", "LR schedule", "--lr-schedule"),
        Kind("augmentations", "tlplug_register_augmentations", "augmentation", "--augment"),
        Kind("data-sources", "tlplug_register_data_sources", "data source", "--data"),
        Kind("adapters", "tlplug_register_adapters", "adapter", "--adapter"),
        Kind("regularizers", "tlplug_register_regularizers", "regularizer", "--regularizer"),
    )
}


@attrs.frozen
class Strategy:
    """One registered strategy: what a name resolves to."""

    kind: Kind
    name: str
    factory: Any
    plugin: str
    description: str

    @property
    def options(self) -> dict[str, Option]:
        """The options the strategy accepts (keyword-only parameters of its factory)."""
        target = self.factory.create if hasattr(self.factory, "create") else self.factory
        return options_of(target)


class Registry:
    """The strategies of one kind, by name; a name claimed twice is an error when used."""

    def __init__(self, kind: Kind):
        self.kind = kind
        self._by_name: dict[str, Strategy] = {}
        self._clashes: dict[str, list[Strategy]] = {}

    def add(self, name: str, factory: Any, plugin: str, description: str | None = None) -> Strategy:
        """Register ``factory`` under ``name`` on behalf of ``plugin``."""
        if not isinstance(name, str) or not name or ":" in name or "/" in name:
            raise TlplugError(
                f"plugin '{plugin}' registered an invalid {self.kind.noun} name {name!r}"
                " (names are non-empty and contain no ':' or '/')"
            )
        strategy = Strategy(self.kind, name, factory, plugin, description or _first_line(factory))
        if name in self._by_name:
            self._clashes.setdefault(name, [self._by_name[name]]).append(strategy)
        else:
            self._by_name[name] = strategy
        return strategy

    def get(self, name: str) -> Strategy:
        """Return the strategy called ``name``; ``plugin/name`` picks among clashing plugins."""
        plugin, _, bare = name.rpartition("/")
        if plugin:
            for strategy in self._clashes.get(bare, [self._by_name.get(bare)]):
                if strategy is not None and strategy.plugin == plugin:
                    return strategy
            raise UnknownNameError(self.kind.noun, name, self.qualified_names())
        if name in self._clashes:
            owners = " and ".join(f"'{s.plugin}'" for s in self._clashes[name])
            picks = " or ".join(f"'{s.plugin}/{name}'" for s in self._clashes[name])
            raise TlplugError(
                f"{self.kind.noun} '{name}' is registered by both {owners}; name one as {picks}"
            )
        if name not in self._by_name:
            raise UnknownNameError(self.kind.noun, name, self._by_name)
        return self._by_name[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._by_name)

    def qualified_names(self) -> list[str]:
        """Every ``plugin/name`` pair, clashing registrations included."""
        every = list(self._by_name.values()) + [s for c in self._clashes.values() for s in c]
        return sorted({f"{s.plugin}/{s.name}" for s in every})

    def strategies(self, pattern: str | None = None) -> list[Strategy]:
        """Registered strategies whose name matches the shell-style ``pattern``, by name."""
        return [
            self._by_name[n]
            for n in self.names()
            if pattern is None or fnmatch.fnmatchcase(n, pattern) or pattern in n
        ]

    def by_plugin(self) -> dict[str, list[str]]:
        """Map plugin name -> the names it registered of this kind."""
        found: dict[str, list[str]] = {}
        every = list(self._by_name.values()) + [s for c in self._clashes.values() for s in c[1:]]
        for s in every:
            found.setdefault(s.plugin, []).append(s.name)
        return {p: sorted(n) for p, n in found.items()}


def split_backbone(spec: str) -> tuple[str, str]:
    """Split ``"timm:resnet50"`` into ``("timm", "resnet50")``."""
    provider, sep, model = spec.partition(":")
    if not sep or not provider or not model:
        raise TlplugError(
            f"backbone '{spec}' must be PROVIDER:NAME, for example timm:{spec or 'resnet50'}"
            f" or torchvision:{spec or 'resnet50'}"
        )
    return provider, model


def _first_line(obj: Callable[..., Any] | Any) -> str:
    doc = getattr(obj, "__doc__", None) or getattr(type(obj), "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
