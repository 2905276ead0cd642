"""One plugin manager per engine: built-ins, the ``tlplug`` entry points and objects passed in.

A plugin that fails to import, or raises while registering, is recorded as failed with its
error and skipped; every other plugin keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from tlplug import hookspecs
from tlplug.builtin import BUILTIN_PLUGINS
from tlplug.errors import TlplugError, close_matches
from tlplug.registry import KINDS, Registry

ENTRY_POINT_GROUP = "tlplug"


@attrs.define
class PluginInfo:
    """What ``tlplug plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "loaded"  # or "failed"
    error: str = ""
    registers: dict[str, list[str]] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the plugin as a JSON-ready dict."""
        return attrs.asdict(self)


class PluginHost:
    """Loads plugins once and answers "what is registered under this name?"."""

    def __init__(self, plugins: Iterable[Any] = (), entrypoints: bool = True):
        self.pm = pluggy.PluginManager("tlplug")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}
        version = _version("tlplug")
        # Built-ins are loaded by module name so they exist even with entry points off or
        # in a source tree without install metadata; their entry points are then skipped.
        for name, module in BUILTIN_PLUGINS.items():
            self._add(name, lambda m=module: importlib.import_module(m), "tlplug", version)
        if entrypoints:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.value in BUILTIN_PLUGINS.values():
                    continue
                dist, dist_version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
                self._add(ep.name, ep.load, dist, dist_version)
        for index, plugin in enumerate(plugins):
            self._add(_object_name(plugin, index), lambda p=plugin: p, "(passed in)", "")

    def _add(self, name: str, load: Any, distribution: str, version: str) -> None:
        while name in self.infos:
            name += "+"
        info = PluginInfo(name, distribution, version)
        self.infos[name] = info
        try:
            plugin = load()
            if self.pm.is_registered(plugin):
                del self.infos[name]
                return
            self.pm.register(plugin, name=name)
            unknown = [c.name for c in self.pm.get_hookcallers(plugin) or [] if c.spec is None]
            if unknown:
                self.pm.unregister(plugin)
                raise TlplugError(f"implements unknown hook(s) {', '.join(_suggest(unknown))}")
        except Exception as exc:  # a broken plugin must not take the others down
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"

    def registry(self, kind: str) -> Registry:
        """Return the registry of ``kind`` (a key of :data:`tlplug.registry.KINDS`)."""
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        return self._registries[kind]

    def _collect(self, kind: str) -> Registry:
        registry = Registry(KINDS[kind])
        hook = getattr(self.pm.hook, KINDS[kind].hook)
        for impl in hook.get_hookimpls():
            info = self.infos[impl.plugin_name]

            def register(name, factory, description=None, _plugin=impl.plugin_name):
                registry.add(name, factory, _plugin, description)

            try:
                impl.function(register=register)
            except Exception as exc:
                info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        for plugin, names in registry.by_plugin().items():
            self.infos[plugin].registers[kind] = names
        return registry

    def all_infos(self) -> list[PluginInfo]:
        """Every plugin with what it registers of each kind (collects every kind)."""
        for kind in KINDS:
            self.registry(kind)
        return list(self.infos.values())

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for calling lifecycle hooks."""
        return self.pm.hook


def _suggest(names: list[str]) -> list[str]:
    hooks = [n for n in dir(hookspecs) if n.startswith("tlplug_")]
    shown = []
    for name in names:
        matches = close_matches(name, hooks, n=1)
        shown.append(f"{name} (did you mean {matches[0]}?)" if matches else name)
    return shown


def _object_name(plugin: Any, index: int) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__
    name = getattr(plugin, "name", None) or getattr(plugin, "__name__", None)
    return str(name) if name else f"{type(plugin).__name__}-{index}"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0+unknown"
