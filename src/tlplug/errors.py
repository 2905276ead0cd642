"""Errors a user can act on: each carries a one-line message that says what to do."""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Iterable
from typing import Any

#: True while the command line runs: messages then name flags, else Python arguments.
COMMAND_LINE = contextvars.ContextVar("tlplug_command_line", default=False)


class TlplugError(Exception):
    """Base class for every error tlplug reports to a user as a single line."""


class UnknownNameError(TlplugError, KeyError):
    """A strategy, provider or model name that nothing registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str = ""):
        self.kind = kind
        self.name = name
        self.choices = sorted(set(choices))
        message = f"unknown {kind} '{name}'"
        matches = close_matches(name, self.choices)
        if matches:
            message += f"; did you mean {_quoted_or(matches)}?"
        elif 0 < len(self.choices) <= 12:
            message += f"; choose one of {', '.join(self.choices)}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise add quotes around the message
        return self.args[0]


class OptionError(TlplugError):
    """A strategy option that does not exist or has a value of the wrong type."""


class DataError(TlplugError):
    """A data folder that is missing, empty or laid out in a way tlplug cannot read."""


class WeightsError(TlplugError):
    """Weights that cannot be fetched, read or matched to the model."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    An error raised in a data-loader worker reaches the main process re-wrapped, its message
    holding the worker's traceback; the original message is its last line.
    """
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "Original Traceback" in lines[0] or lines[0].startswith("Caught "):
        _, sep, message = lines[-1].partition(": ")
        return message if sep else lines[-1]
    return lines[0]


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``choices`` that look like ``name``, best first."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        matches = [lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, n=n)]
    return matches


def _quoted_or(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def flag(name: str, value: Any = None) -> str:
    """How a user sets recipe setting ``name`` where the error will be read: on the command
    line ``--img-size 64`` (``--no-pretrained`` for False), in Python ``img_size=64``
    (``pretrained=False``, ``schedule='full'``, a placeholder bare: ``weights=FILE``);
    without ``value``, just the name (``--img-size``, ``img_size``)."""
    dashed = name.replace("_", "-")
    if not COMMAND_LINE.get():
        if value is None:
            return name
        literal = isinstance(value, bool) or (isinstance(value, str) and not value.isupper())
        return f"{name}={value!r}" if literal else f"{name}={value}"
    if value is False:
        return f"--no-{dashed}"
    if value is None or value is True:
        return f"--{dashed}"
    return f"--{dashed} {value}"
