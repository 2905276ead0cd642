"""Command-line options made from the recipe: one home for every setting's flag and help.

Every general setting of :class:`tlplug.recipe.Settings` is an option with the help text
its field declares, its type and choices from the field's type, and its default from the
field; every kind of strategy (:mod:`tlplug.plugins.kinds`) adds ``--X`` and ``--X-opt``. Options
a user leaves out are None here and left out of the recipe, so the recipe's defaults (or a
config file's values) apply.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import click

from tlplug.errors import OptionError
from tlplug.plugins.kinds import Kind
from tlplug.plugins.options import parse_assignments
from tlplug.recipe import Settings, field_types
from tlplug.recipe_file import merged, read_recipe_file

DATA_HELP = (
    "Image folder (train/ + val/ [+ test/], or class folders), a CSV manifest "
    "(path,label[,split]), or SOURCE:LOCATION for a data-source plugin. "
    "[default: the built-in synthetic set]"
)


def data_and_config(config_help: str) -> Callable:
    """The ``--data`` and ``--config`` options of a command that takes a recipe and data."""

    def decorate(command: Callable) -> Callable:
        config = click.option(
            "--config", "config_file", type=click.Path(path_type=Path), help=config_help
        )
        return click.option("--data", help=DATA_HELP)(config(command))

    return decorate


def recipe_and_data(
    options: dict[str, Any],
    host: Any,
    data: str | None,
    config_file: Path | None,
    ignore: Iterable[str] = (),
) -> tuple[dict[str, Any], str | None]:
    """The recipe the command line gives, over the ``--config`` file's (less its ``ignore``
    keys), and the data: ``--data``, else the file's."""
    recipe = recipe_from_cli(options, host.kinds.values())
    if config_file is None:
        return recipe, data
    from_file, file_data = read_recipe_file(config_file)
    for key in ignore:
        from_file.pop(key, None)
    return merged(from_file, recipe), data or file_data


def setting_option(name: str) -> click.Option:
    """The option of general setting ``name``."""
    field = attrs.fields_dict(Settings)[name]
    expected, meta = field_types(Settings)[name], field.metadata
    flag = "--" + name.replace("_", "-")
    shown = meta.get("shown", _shown(field.default))
    help_text = meta["help"] + (f" [default: {shown}]" if shown else "")
    args = typing.get_args(expected)
    extra: dict[str, Any] = {}
    if expected is bool and field.default is False:
        extra = {"is_flag": True}
    elif bool in (expected, *args):
        flag = f"{flag}/--no-{flag[2:]}"
    elif typing.get_origin(expected) is typing.Literal:
        extra = {"type": click.Choice([str(a) for a in args])}
    elif meta.get("path"):
        extra = {"type": click.Path(path_type=Path), "metavar": meta.get("metavar")}
    elif typing.get_origin(expected) is tuple:
        extra = {"metavar": meta.get("metavar")}
    elif any(typing.get_origin(a) is typing.Literal for a in args):
        # A number or a word (--lr 3e-4, --lr auto): the recipe converts and checks it.
        extra = {"metavar": "|".join(_metavar(a) for a in args if a is not type(None))}
    else:
        number = next((t for t in (int, float) if t in (expected, *args)), None)
        extra = {"type": number} if number else {}
        if meta.get("metavar"):
            extra["metavar"] = meta["metavar"]
    return click.Option([flag, name], default=None, help=help_text, **extra)


def kind_options(kind: Kind) -> list[click.Option]:
    """``--X`` (unless the command declares it itself) and ``--X-opt`` for ``kind``."""
    made = []
    if kind.scope == "recipe":
        default = (",".join(kind.default) or "none") if kind.many else (kind.default or "none")
        made.append(
            click.Option(
                [kind.flag, kind.field],
                multiple=kind.many,
                help=f"{kind.help} [default: {default}]",
            )
        )
    metavar = "NAME.KEY=VALUE" if kind.many else "KEY=VALUE"
    made.append(
        click.Option(
            [kind.options_flag, f"{kind.field}_opt"],
            multiple=True,
            metavar=metavar,
            help=f"Option of the {kind.noun} (repeatable); see 'tlplug list {kind.key}'.",
        )
    )
    return made


def recipe_options(kinds: Iterable[Kind], settings: Iterable[str]) -> Callable:
    """A decorator adding the options of ``kinds`` and of the general ``settings``; a flag
    the command declares itself (below this decorator) stays the command's."""

    def add(command: Callable) -> Callable:
        own = {flag for p in getattr(command, "__click_params__", []) for flag in p.opts}
        params = [o for kind in kinds for o in kind_options(kind) if not own & set(o.opts)]
        params += [setting_option(name) for name in settings]
        command.__click_params__ = [*getattr(command, "__click_params__", []), *params[::-1]]
        return command

    return add


def recipe_from_cli(options: dict[str, Any], kinds: Iterable[Kind]) -> dict[str, Any]:
    """Turn a command's option values into recipe keyword arguments, taking them out of
    ``options``; options not given are left out."""
    recipe: dict[str, Any] = {}
    for kind in kinds:
        given = options.pop(f"{kind.field}_opt", ())
        if kind.scope == "recipe":
            names = options.pop(kind.field, None)
            if names:
                recipe[kind.field] = tuple(names) if kind.many else names
        if given:
            parse = nested_assignments if kind.many else parse_assignments
            recipe[kind.options_field] = parse(given, kind.options_flag)
    recipe.update({k: v for k, v in options.items() if v is not None})
    options.clear()
    return recipe


def nested_assignments(given: Iterable[str], flag: str) -> dict[str, dict[str, str]]:
    """Parse ``NAME.KEY=VALUE`` assignments into ``{NAME: {KEY: VALUE}}``."""
    nested: dict[str, dict[str, str]] = {}
    for key, value in parse_assignments(given, flag).items():
        name, sep, option = key.rpartition(".")
        if not sep or not name:
            raise OptionError(f"{flag} expects NAME.KEY=VALUE, got {key + '=' + value!r}")
        nested.setdefault(name, {})[option] = value
    return nested


def _metavar(expected: Any) -> str:
    if typing.get_origin(expected) is typing.Literal:
        return "|".join(map(str, typing.get_args(expected)))
    return getattr(expected, "__name__", str(expected)).upper()


def _shown(default: Any) -> str:
    if default is None:
        return ""
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return str(default)
