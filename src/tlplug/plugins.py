"""One plugin manager per engine: built-ins, the ``tlplug`` entry points and objects passed in.

A plugin that fails to import, or raises while registering, is recorded as failed with its
error and skipped; every other plugin keeps working. A plugin that needs another hook API
(its ``TLPLUG_HOOK_API``) is recorded as incompatible and not loaded.

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
from typing import Any

import attrs
import pluggy

from tlplug import hookspecs
from tlplug.builtin import BUILTIN_PLUGINS
from tlplug.errors import TlplugError, close_matches
from tlplug.registry import KINDS, Registry

ENTRY_POINT_GROUP = "tlplug"
DISABLE_ENV = "TLPLUG_DISABLE_PLUGINS"
LOAD_ENV = "TLPLUG_LOAD_PLUGINS"


@attrs.define
class PluginInfo:
    """What ``tlplug plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "loaded"  # or "failed", "incompatible", "disabled"
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

    def not_loaded(self) -> list[PluginInfo]:
        """Plugins that failed, are incompatible or were disabled."""
        return [i for i in self.infos.values() if i.status != "loaded"]

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for calling lifecycle hooks."""
        return self.pm.hook


def api_problem(required: object, distribution: str) -> str:
    """Why a plugin that declares ``TLPLUG_HOOK_API = required`` cannot load here; "" if it can."""
    if required is None:
        return ""
    have = _version_tuple(hookspecs.HOOK_API)
    try:
        need = _version_tuple(str(required))
    except ValueError:
        return f"declares TLPLUG_HOOK_API = {required!r}, which is not MAJOR.MINOR"
    if need[0] == have[0] and need[1] <= have[1]:
        return ""
    if need[0] < have[0]:
        fix = f"install a release of {distribution} made for hook API {have[0]}"
    else:
        fix = "upgrade tlplug"
    return (
        f"needs tlplug hook API {required}, and this tlplug {_version('tlplug')} has "
        f"{hookspecs.HOOK_API}; {fix}"
    )


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


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
