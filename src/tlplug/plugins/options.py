"""Strategy options: the keyword-only parameters of a factory, typed by their annotations.

A factory such as ``def gradual(groups, epochs, *, epochs_per_stage: int = 1)`` has one
option, ``epochs_per_stage``. Values arrive as strings from the command line
(``--schedule-opt epochs_per_stage=2``) or as Python values from the API; both are checked
against the parameter's type here, so an unknown option or a bad value is a clear error
before any work starts.
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from tlplug.errors import OptionError, close_matches

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@attrs.frozen
class Option:
    """One option of a strategy: its name, expected type and default."""

    name: str
    type: Any
    default: Any
    required: bool

    def describe(self) -> str:
        """Return ``name=default (type)`` for listings and error messages."""
        shown = "required" if self.required else _format(self.default)
        return f"{self.name}={shown} ({_type_name(self.type)})"


def options_of(factory: Callable[..., Any]) -> dict[str, Option]:
    """Return the options ``factory`` accepts: its keyword-only parameters, in order."""
    target = factory
    if not inspect.isfunction(factory) and not inspect.ismethod(factory) and callable(factory):
        target = factory.__call__ if not inspect.isclass(factory) else factory.__init__
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return {}
    names = getattr(inspect.unwrap(target), "__globals__", {})
    found = {}
    for param in signature.parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        declared = _annotation(param.annotation, names)
        if declared is None:
            declared = type(default) if default is not None else str
        found[param.name] = Option(
            param.name, declared, default, param.default is inspect.Parameter.empty
        )
    return found


def _annotation(annotation: Any, names: dict[str, Any]) -> Any:
    """A parameter's declared type, its annotation evaluated where the factory was written
    (only the parameter's own: the factory's other annotations may name what its module
    imports only when it runs); None when there is none to use."""
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {**vars(typing), **names})  # as typing.get_type_hints does
    except Exception:
        return None


def parse_assignments(items: Iterable[str], flag: str) -> dict[str, str]:
    """Turn ``["a=1", "b=x"]`` (as given to ``flag``) into ``{"a": "1", "b": "x"}``."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def resolve_options(
    factory: Callable[..., Any], given: Mapping[str, Any] | None, what: str
) -> dict[str, Any]:
    """Check ``given`` against the options of ``factory`` and return them typed.

    ``what`` names the strategy in messages, e.g. ``schedule 'gradual'``. Options left
    out keep the factory's defaults and are not returned.
    """
    known = options_of(factory)
    resolved: dict[str, Any] = {}
    for key, value in (given or {}).items():
        option = known.get(key)
        if option is None:
            valid = ", ".join(o.describe() for o in known.values()) or "none"
            matches = close_matches(key, known)
            hint = f"did you mean '{matches[0]}'? " if matches else ""
            raise OptionError(f"{what} has no option '{key}'; {hint}its options: {valid}")
        if value is None and option.default is None:
            resolved[key] = None
        else:
            resolved[key] = coerce(value, option.type, f"{what} option '{key}'")
    missing = [o.name for o in known.values() if o.required and o.name not in resolved]
    if missing:
        raise OptionError(f"{what} needs option(s) {', '.join(missing)}")
    return resolved


def with_defaults(factory: Callable[..., Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``resolved`` options (from :func:`resolve_options`) with every option left out at
    its default (those JSON can hold), in the factory's order: what a run records, so that
    it reloads the same way after a plugin changes a default."""
    full = dict(resolved)
    for option in options_of(factory).values():
        if option.name not in full and _json_ready(option.default):
            full[option.name] = option.default
    return {name: full[name] for name in options_of(factory) if name in full}


def coerce(value: Any, expected: Any, what: str) -> Any:
    """Convert ``value`` (often a string from the command line) to ``expected``."""
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        errors = []
        alternatives = [arg for arg in args if arg is not type(None)]
        for arg in alternatives:
            try:
                return coerce(value, arg, what)
            except OptionError as exc:
                errors.append(str(exc))
        if len(alternatives) > 1:  # a number or a word: "--lr must be a number or auto"
            wanted = " or ".join(_wanted(arg) for arg in alternatives)
            raise OptionError(f"{what} must be {wanted}, got {value!r}")
        raise OptionError(errors[0] if errors else f"{what}: cannot use {value!r}")
    if origin is typing.Literal:
        text = str(value)
        for choice in args:
            if text == str(choice):
                return choice
        raise OptionError(f"{what} must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin in (tuple, list):
        item_type = args[0] if args else str
        if isinstance(value, str):
            items = [v for v in value.replace(" ", "").split(",") if v]
        elif isinstance(value, Iterable):
            items = list(value)
        else:
            items = [value]
        converted = [coerce(v, item_type, what) for v in items]
        return tuple(converted) if origin is tuple else converted
    if expected is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise OptionError(f"{what} must be true or false, got {value!r}")
    if expected in (int, float):
        if isinstance(value, bool):
            raise OptionError(f"{what} must be a finite number, got {value}")
        try:
            number = expected(value)
            if expected is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if not math.isfinite(number):
                raise ValueError
            return number
        except (TypeError, ValueError, OverflowError):
            raise OptionError(
                f"{what} must be {'an integer' if expected is int else 'a finite number'}, "
                f"got {value!r}"
            ) from None
    if expected is str:
        return str(value)
    if isinstance(expected, type) and isinstance(value, expected):
        return value
    raise OptionError(f"{what}: cannot use {value!r} as {_type_name(expected)}")


def _json_ready(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _wanted(expected: Any) -> str:
    """What a value of ``expected`` is, for "must be ..." messages."""
    if typing.get_origin(expected) is typing.Literal:
        return " or ".join(map(str, typing.get_args(expected)))
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}
    return names.get(expected, _type_name(expected))


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected))
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(expected)))
    if origin in (tuple, list):
        args = typing.get_args(expected)
        return f"comma-separated {_type_name(args[0]) if args else 'str'}s"
    return getattr(expected, "__name__", str(expected))


def _format(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)
