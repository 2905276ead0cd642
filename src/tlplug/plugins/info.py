"""What ``tlplug plugins`` reports of a plugin, and whether a plugin's hook API fits."""

from __future__ import annotations

import importlib.metadata as metadata
from typing import Any

import attrs

from tlplug.plugins import hookspecs


@attrs.define
class PluginInfo:
    """One plugin: where it comes from, whether it loaded, what it registers (by kind) and
    which lifecycle hooks it implements."""

    name: str
    distribution: str
    version: str
    status: str = "loaded"  # or "failed", "incompatible", "disabled"
    error: str = ""
    registers: dict[str, list[str]] = attrs.field(factory=dict)
    hooks: list[str] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the plugin as a JSON-ready dict."""
        return attrs.asdict(self)


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
        f"needs tlplug hook API {required}, and this tlplug {version_of('tlplug')} has "
        f"{hookspecs.HOOK_API}; {fix}"
    )


def version_of(distribution: str) -> str:
    """The installed version of ``distribution``, or ``0+unknown``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)
