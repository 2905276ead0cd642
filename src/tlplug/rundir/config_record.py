"""config.json, written and read in one place.

It holds ``recipe`` (the choices, as :meth:`tlplug.Recipe.to_json` gives them) and
``resolved`` (what the engine made of them: classes, layer groups, the freeze plan, the
backbone's data config, the strategies with their options), which rebuilds the trained
model with no other input; and the versions that made it. Prediction, resuming and every
later command read it through :func:`read_saved_run`.
"""

from __future__ import annotations

import importlib.metadata as metadata
import time
from pathlib import Path
from typing import Any

import attrs

from tlplug import __version__
from tlplug.errors import TlplugError
from tlplug.model.backbone import DataConfig
from tlplug.model.transfer import BACKBONE_PREFIX, HEAD_PREFIX, count_params
from tlplug.plugins.resolve import record_choices
from tlplug.recipe import Recipe
from tlplug.recipe_file import chosen_lr, read_recipe_file
from tlplug.rundir import layout as rundir


def describe_run(run: Any, backbone: Any, report: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The config.json of ``run`` (a :class:`tlplug.run.Run` being assembled, with its
    built ``backbone`` and the weights-loading ``report``); ``extra`` joins ``resolved``."""
    model, splits = run.model, run.data
    resolved = {
        "backbone": {
            "model": run.parts.model_name,
            "weights": backbone.weights,
            "pretrained": backbone.trained,
            "weights_report": report.summary() if report else None,
            "num_features": backbone.num_features,
            "classifier_keys": list(backbone.classifier),
        },
        "state_dict_prefixes": {"backbone": BACKBONE_PREFIX, "head": HEAD_PREFIX},
        "img_size": extra.pop("img_size"),
        "data_config": backbone.data_config.to_json(),
        "classes": list(splits.classes),
        "data": {
            **splits.info,
            "num_train": len(splits.train),
            "num_val": len(splits.val),
            "num_test": len(splits.test) if splits.test is not None else 0,
            "num_skipped": len(splits.skipped),
        },
        "groups": [
            {"name": g.name, "params": count_params(model.group_params(g.name))}
            for g in model.groups
        ],
        "plan": [s.to_json() for s in run.plan],
    }
    record_choices(resolved, run.parts, run.plugins.kinds)
    recipe = run.recipe
    resolved |= {
        "weight_decay": recipe.resolved_weight_decay,
        "weight_decay_on_bias_and_norm": recipe.decay_norm_bias,
        "bn_policy": recipe.bn_policy,
        "pinned_params": count_params(
            [p for n, p in model.named_parameters() if n in model.pinned]
        ),
        **extra,
        **run.numerics.describe(),
    }
    return {
        "tlplug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.to_json(),
        "resolved": resolved,
        "versions": _versions(),
    }


@attrs.frozen
class SavedRun:
    """A run directory's config.json, read and checked."""

    path: Path
    config: dict[str, Any]
    recipe: Recipe

    @property
    def resolved(self) -> dict[str, Any]:
        """What the engine resolved from the recipe."""
        return self.config["resolved"]

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label order."""
        return tuple(self.resolved["classes"])

    @property
    def img_size(self) -> int:
        """The size the run trained at."""
        return self.resolved["img_size"]

    @property
    def data_config(self) -> DataConfig:
        """The backbone's preprocessing (mean, std, interpolation, crop)."""
        data = self.resolved["data_config"]
        return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def data_spec(self) -> str | None:
        """The ``--data`` value that reads the run's data again."""
        return read_recipe_file(self.path / rundir.CONFIG)[1]

    @property
    def batch_size(self) -> int:
        """The batch size the run trained with (``--auto-batch-size`` may have lowered it)."""
        return self.resolved.get("batch_size", self.recipe.batch_size)

    def plugins_used(self) -> list[str]:
        """The plugins whose strategies build the network (backbone provider and head)."""
        resolved = self.resolved
        return sorted({resolved["backbone"]["provider"]["plugin"], resolved["head"]["plugin"]})

    def plugins_chosen(self) -> list[str]:
        """Every plugin whose strategy the run chose, of every kind (config.json's records
        of the choices, ``{"name", "plugin", "options"}``)."""
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                if {"name", "plugin", "options"} <= set(value):
                    found.add(value["plugin"])
                for inner in value.values():
                    walk(inner)
            elif isinstance(value, list):
                for inner in value:
                    walk(inner)

        walk(self.resolved)
        return sorted(found)


def read_saved_run(
    run_dir: str | Path, recipe_type: type[Recipe] = Recipe, *, strict: bool = True
) -> SavedRun:
    """Read ``run_dir``'s config.json; with ``strict`` False, recipe entries of kinds no
    installed plugin adds are left out (enough to rebuild the network)."""
    run_dir = Path(run_dir)
    config = rundir.read_json(run_dir / rundir.CONFIG)
    try:
        recipe = recipe_type.from_json(
            chosen_lr(config["recipe"], config["resolved"]), strict=strict
        )
        saved = SavedRun(run_dir, config, recipe)
        for read in (SavedRun.data_config, SavedRun.img_size, SavedRun.classes):
            read.fget(saved)  # a config without them cannot rebuild the model
        saved.plugins_used()
    except (KeyError, TypeError) as exc:
        raise TlplugError(f"{run_dir / rundir.CONFIG} is incomplete ({exc} missing)") from None
    return saved


def check_same_run(
    now: dict[str, Any], then: dict[str, Any], run_dir: Path, plan: bool = True
) -> None:
    """Refuse to resume when the data or the model (or, with ``plan``, the freeze plan)
    would differ from the run's own."""
    checked = (("classes", "classes"), ("groups", "layer groups"), ("plan", "plan"))
    for key, what in checked[: 3 if plan else 2]:
        if now[key] != then[key]:
            raise TlplugError(f"cannot resume {run_dir}: its {what} differ from what it had")
    for key in ("num_train", "num_val"):
        if now["data"][key] != then["data"][key]:
            raise TlplugError(
                f"cannot resume {run_dir}: its data now has {now['data'][key]} "
                f"{key[4:]} images, not {then['data'][key]}"
            )


def _versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "torchvision", "timm"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
