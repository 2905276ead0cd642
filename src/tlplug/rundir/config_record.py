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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tlplug.data.sources import Splits
from tlplug.errors import TlplugError
from tlplug.model.backbone import Backbone, DataConfig
from tlplug.model.transfer import BACKBONE_PREFIX, HEAD_PREFIX, TransferModel, count_params
from tlplug.plugins.kinds import Kind
from tlplug.plugins.resolve import Parts, record_choices
from tlplug.recipe import Recipe
from tlplug.recipe_file import chosen_lr, read_recipe_file
from tlplug.run import BackboneRecord, Resolved
from tlplug.rundir import layout as rundir
from tlplug.rundir.weights import LoadReport
from tlplug.train.stages import Stage
from tlplug.version import __version__


def resolve_record(
    recipe: Recipe,
    parts: Parts,
    kinds: Mapping[str, Kind],
    model: TransferModel,
    splits: Splits,
    plan: Sequence[Stage],
    backbone: Backbone,
    report: LoadReport | None,
    **fields: Any,
) -> Resolved:
    """The :class:`~tlplug.run.Resolved` record of a run being assembled: its built
    ``backbone`` (with the weights-loading ``report``), ``model``, data and ``plan``, the
    choices in ``parts``; ``fields`` are the record's other fields (``img_size``,
    ``batch_size``, ...) and, under ``details``, more JSON-ready entries."""
    details: dict[str, Any] = {
        "state_dict_prefixes": {"backbone": BACKBONE_PREFIX, "head": HEAD_PREFIX},
        "data_config": backbone.data_config.to_json(),
    }
    record_choices(details, parts, kinds)
    details |= {
        "weight_decay": recipe.resolved_weight_decay,
        "weight_decay_on_bias_and_norm": recipe.decay_norm_bias,
        "bn_policy": recipe.bn_policy,
        "pinned_params": count_params(
            [p for n, p in model.named_parameters() if n in model.pinned]
        ),
        **fields.pop("details", {}),
    }
    return Resolved(
        backbone=BackboneRecord(
            model=parts.model_name,
            weights=backbone.weights,
            pretrained=backbone.trained,
            weights_report=report.summary() if report else None,
            num_features=backbone.num_features,
            classifier_keys=tuple(backbone.classifier),
        ),
        classes=tuple(splits.classes),
        data={
            **splits.info,
            "num_train": len(splits.train),
            "num_val": len(splits.val),
            "num_test": len(splits.test) if splits.test is not None else 0,
            "num_skipped": len(splits.skipped),
        },
        groups=tuple((g.name, count_params(model.group_params(g.name))) for g in model.groups),
        plan=tuple(plan),
        details=details,
        **fields,
    )


def config_json(recipe: Recipe, resolved: Resolved, command: str | None = None) -> dict[str, Any]:
    """config.json of a run of ``recipe`` resolved as ``resolved`` (and started by the
    shell ``command``, when given)."""
    config = {
        "tlplug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.to_json(),
        "resolved": resolved.to_json(),
        "versions": _versions(),
    }
    if command:
        config["command"] = command
    return config


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


def check_same_run(now: Resolved, then: dict[str, Any], run_dir: Path, plan: bool = True) -> None:
    """Refuse to resume when the data or the model (or, with ``plan``, the freeze plan)
    would differ from the run's own (``then``: config.json's ``resolved`` part)."""
    now = now.to_json()
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
