"""Name -> strategy registries, one per kind, filled by the plugins' registration hooks."""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from typing import Any

import attrs

from tlplug.errors import TlplugError, UnknownNameError
from tlplug.plugins.kinds import KINDS, Kind, split_backbone
from tlplug.plugins.options import Option, options_of

__all__ = ["KINDS", "Kind", "Registry", "Strategy", "split_backbone", "summary_of"]


@attrs.frozen
class Strategy:
    """One registered strategy: what a name resolves to."""

    kind: Kind
    name: str
    factory: Any
    plugin: str
    description: str

    @property
    def target(self) -> Callable[..., Any]:
        """What the engine calls: the factory, or a provider object's ``create``."""
        return self.factory.create if hasattr(self.factory, "create") else self.factory

    @property
    def options(self) -> dict[str, Option]:
        """The options the strategy accepts (keyword-only parameters of its target)."""
        return options_of(self.target)


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
        strategy = Strategy(self.kind, name, factory, plugin, description or summary_of(factory))
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


def summary_of(obj: Any) -> str:
    """The one-line description of ``obj`` from its docstring: the first sentence of the
    first paragraph, or the whole paragraph where no sentence ends inside it, as one line."""
    doc = getattr(obj, "__doc__", None) or getattr(type(obj), "__doc__", None) or ""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    end = re.search(r"[.!?](?=\s+[A-Z(`])", paragraph)
    return paragraph[: end.end()] if end else paragraph
