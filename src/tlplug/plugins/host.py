"""One plugin manager per engine: built-ins, the ``tlplug`` entry points and objects passed in.

A plugin that fails to import, implements a hook that does not exist, or raises while
adding kinds or registering strategies is recorded as failed with its error and disabled
whole: it is unregistered and none of its names stay. Every other plugin keeps working. A
plugin that needs another hook API (its ``TLPLUG_HOOK_API``) is recorded as incompatible
and not loaded.

``TLPLUG_DISABLE_PLUGINS`` (comma-separated plugin or distribution names) leaves those
installed plugins out; ``TLPLUG_LOAD_PLUGINS`` loads only the installed plugins it names
(the built-ins always load).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import pluggy

from tlplug.builtin import BUILTIN_PLUGINS
from tlplug.errors import TlplugError, close_matches
from tlplug.plugins import hookspecs
from tlplug.plugins.info import PluginInfo, api_problem, version_of
from tlplug.plugins.kinds import KINDS, Kind

__all__ = ["PluginHost", "PluginInfo", "api_problem"]
from tlplug.plugins.registry import Registry
from tlplug.recipe import Recipe, recipe_class

ENTRY_POINT_GROUP = "tlplug"
DISABLE_ENV = "TLPLUG_DISABLE_PLUGINS"
LOAD_ENV = "TLPLUG_LOAD_PLUGINS"


class PluginHost:
    """Loads plugins once and answers "what is registered under this name?"."""

    def __init__(self, plugins: Iterable[Any] = (), entrypoints: bool = True):
        self.pm = pluggy.PluginManager("tlplug")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.kinds: dict[str, Kind] = dict(KINDS)
        self._registries: dict[str, Registry] | None = None
        version = version_of("tlplug")
        # Built-ins are loaded by module name so they exist even with entry points off or
        # in a source tree without install metadata; their entry points are then skipped.
        for name, module in BUILTIN_PLUGINS.items():
            self._add(name, lambda m=module: importlib.import_module(m), "tlplug", version)
        if entrypoints:
            disabled, only = _names_in(DISABLE_ENV) or set(), _names_in(LOAD_ENV)
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.value in BUILTIN_PLUGINS.values():
                    continue
                dist, dist_version = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
                names = {ep.name, dist}
                if names & disabled or (only is not None and not names & only):
                    why = f"by {DISABLE_ENV}" if names & disabled else f"not in {LOAD_ENV}"
                    self.infos[ep.name] = PluginInfo(
                        ep.name, dist, dist_version, "disabled", f"left out {why}"
                    )
                    continue
                self._add(ep.name, ep.load, dist, dist_version)
        for index, plugin in enumerate(plugins):
            self._add(_object_name(plugin, index), lambda p=plugin: p, "(passed in)", "")
        self._add_kinds()
        for name in list(self._loaded()):
            unknown = [c.name for c in self.pm.get_hookcallers(self.pm.get_plugin(name)) or []]
            unknown = [hook for hook in unknown if not self._known(hook)]
            if unknown:
                self._fail(name, TlplugError(f"implements unknown hook(s) {_suggest(unknown)}"))

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
            problem = api_problem(getattr(plugin, "TLPLUG_HOOK_API", None), distribution)
            if problem:
                info.status, info.error = "incompatible", problem
                return
            try:
                self.pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:
                raise TlplugError(_plain_validation_error(exc)) from None
        except Exception as exc:  # a broken plugin must not take the others down
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"

    def _add_kinds(self) -> None:
        """Let plugins add kinds of their own (``tlplug_add_kinds``)."""
        for impl in self.pm.hook.tlplug_add_kinds.get_hookimpls():
            added: list[Kind] = []

            def add(kind: Kind, specs: Any, _added=added) -> None:
                if not isinstance(kind, Kind):
                    raise TlplugError(f"added {type(kind).__name__}, not a tlplug.Kind")
                taken = {k.key for k in self.kinds.values()} | {
                    k.field for k in self.kinds.values()
                }
                if {kind.key, kind.field} & taken:
                    raise TlplugError(f"kind '{kind.key}' ({kind.flag}) exists already")
                self.pm.add_hookspecs(specs)
                if not self._known(kind.hook):
                    raise TlplugError(f"kind '{kind.key}': {specs!r} has no spec of {kind.hook}")
                _added.append(kind)

            try:
                impl.function(add=add)
            except Exception as exc:
                self._fail(impl.plugin_name, exc)
                continue
            self.kinds.update({kind.key: kind for kind in added})

    def _known(self, hook: str) -> bool:
        caller = getattr(self.pm.hook, hook, None)
        return caller is not None and caller.spec is not None

    def _loaded(self) -> list[str]:
        return [name for name, info in self.infos.items() if info.status == "loaded"]

    def _fail(self, name: str, exc: Exception) -> None:
        """Disable plugin ``name`` whole: record why and unregister every hook of it."""
        info = self.infos[name]
        info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)

    def registry(self, kind: str) -> Registry:
        """Return the registry of ``kind`` (a key of :attr:`kinds`)."""
        if self._registries is None:
            self._registries = self._collect()
        return self._registries[kind]

    def _collect(self) -> dict[str, Registry]:
        """Call every registration hook of every plugin; keep the names of the plugins
        that registered without an error."""
        staged: list[tuple[str, str, tuple]] = []  # (plugin, kind, register's arguments)
        for key, kind in self.kinds.items():
            for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():

                def register(name, factory, description=None, _at=(impl.plugin_name, key)):
                    staged.append((*_at, (name, factory, _at[0], description)))

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._fail(impl.plugin_name, exc)
        registries = {key: Registry(kind) for key, kind in self.kinds.items()}
        for plugin, key, arguments in staged:
            if self.infos[plugin].status == "loaded":
                registries[key].add(*arguments)
        for key, registry in registries.items():
            for plugin, names in registry.by_plugin().items():
                self.infos[plugin].registers[key] = names
        return registries

    def all_infos(self) -> list[PluginInfo]:
        """Every plugin with what it registers and the lifecycle hooks it implements."""
        self.registry("heads")
        registration = {kind.hook for kind in self.kinds.values()}
        for name in self._loaded():
            callers = self.pm.get_hookcallers(self.pm.get_plugin(name)) or []
            self.infos[name].hooks = sorted(
                c.name
                for c in callers
                if c.name not in registration and c.name.startswith("tlplug_")
            )
        return list(self.infos.values())

    def not_loaded(self) -> list[PluginInfo]:
        """Plugins that failed, are incompatible or were disabled."""
        return [i for i in self.infos.values() if i.status != "loaded"]

    @cached_property
    def recipe_type(self) -> type[Recipe]:
        """The recipe class with a field for every kind, plugins' kinds included."""
        extra = [kind for key, kind in self.kinds.items() if key not in KINDS]
        return recipe_class(extra, base=Recipe) if extra else Recipe

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for calling lifecycle hooks."""
        return self.pm.hook


def _plain_validation_error(exc: pluggy.PluginValidationError) -> str:
    """pluggy's refusal of a hook implementation, in words a plugin author can act on."""
    text = str(exc)
    for name in dir(hookspecs):
        if name.startswith("tlplug_") and name in text:
            spec = inspect.signature(getattr(hookspecs, name))
            return (
                f"its {name} asks for arguments the hook does not pass; "
                f"the hook passes {', '.join(spec.parameters)}"
            )
    return text.splitlines()[0]


def _names_in(variable: str) -> set[str] | None:
    """The comma-separated names in environment ``variable``; None when it is not set."""
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _suggest(names: list[str]) -> str:
    hooks = [n for n in dir(hookspecs) if n.startswith("tlplug_")]
    shown = []
    for name in names:
        matches = close_matches(name, hooks, n=1)
        shown.append(f"{name} (did you mean {matches[0]}?)" if matches else name)
    return ", ".join(shown)


def _object_name(plugin: Any, index: int) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__
    name = getattr(plugin, "name", None) or getattr(plugin, "__name__", None)
    return str(name) if name else f"{type(plugin).__name__}-{index}"
