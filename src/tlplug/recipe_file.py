"""Recipes in files (``tlplug run --config FILE``): TOML, YAML or JSON.

A file holds recipe keys as ``tlplug run`` options name them (``backbone``, ``lr``,
``schedule_opts``...) and may name the data with ``data``. A run's config.json works as it
is: its recipe (with the LR ``--lr auto`` chose), and its data unless the command line
gives other data, so ``tlplug run --config runs/a/config.json --out runs/b`` repeats run
``a``. In Python::

    recipe, data = read_recipe_file("runs/a/config.json")
    Engine.from_plugins(**recipe).fit(data, out="runs/b")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tlplug.errors import OptionError
from tlplug.recipe import AUTO


def read_recipe_file(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The recipe keys and the data (None: not named) that the file at ``path`` holds."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read --config {path} ({exc.strerror or exc})") from None
    data = _parse(text, path)
    if not isinstance(data, dict):
        raise OptionError(f"--config {path} must hold a mapping of recipe keys")
    if isinstance(data.get("recipe"), dict) and isinstance(data.get("resolved"), dict):
        recipe = chosen_lr(dict(data["recipe"]), data["resolved"])
        return recipe, _run_data(data["resolved"].get("data", {}))
    recipe = dict(data)
    where = recipe.pop("data", None)
    return recipe, None if where is None else str(where)


def chosen_lr(recipe: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """A run's recipe with the LR that ``--lr auto`` chose (config.json's ``resolved.lr``)
    in place of ``auto``: the run repeats and resumes with it, testing nothing again."""
    if recipe.get("lr") == AUTO and isinstance(resolved.get("lr"), (int, float)):
        return {**recipe, "lr": resolved["lr"]}
    return recipe


def merged(from_file: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The file's recipe with the command line's keys on top; options (``*_opts``) merge
    key by key, so ``--head-opt dropout=0.2`` keeps the file's other head options."""
    recipe = dict(from_file)
    for key, value in given.items():
        old = recipe.get(key)
        if key.endswith("_opts") and isinstance(old, dict) and isinstance(value, dict):
            recipe[key] = {
                **old,
                **{
                    name: {**old[name], **opts}
                    if isinstance(opts, dict) and isinstance(old.get(name), dict)
                    else opts
                    for name, opts in value.items()
                },
            }
        else:
            recipe[key] = value
    return recipe


def _parse(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OptionError(f"--config {path} is not valid {suffix[1:].upper()} ({first})") from None
    raise OptionError(f"--config {path}: use a .toml, .yaml, .yml or .json file")


def _run_data(data: dict[str, Any]) -> str | None:
    """The ``--data`` value that reads a run's data again (as its config.json records it)."""
    if "source" not in data:  # runs made before data sources were plugins
        return data.get("root") if data.get("kind") == "folder" else None
    return f"{data['source']}:{data['location']}"
