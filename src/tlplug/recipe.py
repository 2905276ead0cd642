"""The recipe: every choice a run makes, as one attrs class mirrored by the CLI options.

``Recipe`` holds what the user chose (strategy names and their options, optimizer
settings, sizes). A run's config.json stores it together with what the engine resolved
from it (classes, groups, the freeze plan, the data config), which is enough to rebuild
the trained model with no other input.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import attrs

from tlplug.errors import OptionError, close_matches
from tlplug.options import coerce

Optimizer = Literal["sgd", "adam", "adamw"]
BnPolicy = Literal["frozen", "eval", "train"]
CacheMode = Literal["auto", "on", "off"]
Balance = Literal["off", "sampler", "loss"]

# Weight decay per optimizer when none is given: decoupled decay needs a larger value.
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}


@attrs.define(kw_only=True)
class Recipe:
    """The choices of one run; field names match the CLI options (--lr-schedule: lr_schedule)."""

    backbone: str = "timm:resnet18"
    backbone_opts: dict[str, Any] = attrs.field(factory=dict)
    pretrained: bool = True
    weights: str | None = None
    head: str = "linear"
    head_opts: dict[str, Any] = attrs.field(factory=dict)
    schedule: str = "freeze-unfreeze"
    schedule_opts: dict[str, Any] = attrs.field(factory=dict)
    lr_schedule: str = "cosine"
    lr_schedule_opts: dict[str, Any] = attrs.field(factory=dict)
    augment: tuple[str, ...] = ("flip",)
    augment_opts: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    adapter: str | None = None
    adapter_opts: dict[str, Any] = attrs.field(factory=dict)
    regularizer: tuple[str, ...] = ()
    regularizer_opts: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    data_opts: dict[str, Any] = attrs.field(factory=dict)
    label_smoothing: float = 0.0
    balance: Balance = "off"
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    lr_decay: float | None = None
    lr_mult: tuple[float, ...] = ()
    weight_decay: float | None = None
    decay_norm_bias: bool = False
    momentum: float = 0.9
    bn_policy: BnPolicy = "frozen"
    max_groups: int | None = None
    epochs: int = 5
    val_every: int = 1
    batch_size: int = 32
    img_size: int | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    val_split: float | None = None
    skip_nonfinite: int = 0
    cache_features: CacheMode = "auto"
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    auto_batch_size: bool = False

    @classmethod
    def from_kwargs(cls, **given: Any) -> Recipe:
        """Build a recipe from keyword arguments, converting and checking every value."""
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in attrs.fields(cls)}
        values = {}
        for key, value in given.items():
            if key not in fields:
                matches = close_matches(key, fields)
                hint = f"; did you mean '{matches[0]}'?" if matches else ""
                raise OptionError(f"unknown recipe setting {key!r}{hint}")
            if key.endswith("_opts"):
                if value is not None and not isinstance(value, dict):
                    raise OptionError(f"setting '{key}' must be a mapping of options")
                values[key] = dict(value or {})
            elif value is None:
                if type(None) not in typing.get_args(hints[key]):
                    raise OptionError(f"setting '{key}' needs a value")
                values[key] = None
            else:
                values[key] = coerce(value, hints[key], f"setting '{key}'")
        recipe = cls(**values)
        recipe.check()
        return recipe

    def check(self) -> None:
        """Raise :class:`OptionError` for values no run can use."""
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "val_every": self.val_every,
        }
        for name, value in positive.items():
            if value <= 0:
                raise OptionError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.img_size is not None and self.img_size < 16:
            raise OptionError(f"--img-size must be at least 16, got {self.img_size}")
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise OptionError(f"--val-split must be between 0 and 1, got {self.val_split}")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise OptionError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_decay is not None and self.lr_mult:
            raise OptionError("give --lr-decay or --lr-mult, not both")
        if any(not m >= 0 for m in self.lr_mult):
            raise OptionError(f"--lr-mult multipliers must be >= 0, got {list(self.lr_mult)}")
        if self.max_groups is not None and self.max_groups < 1:
            raise OptionError(f"--max-groups must be at least 1, got {self.max_groups}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise OptionError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.skip_nonfinite < 0:
            raise OptionError(f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"--workers must be >= 0, got {self.workers}")
        if self.weights is not None and "\x00" in self.weights:
            raise OptionError("--weights contains a NUL byte; give the path of a weights file")
        if not 0 <= self.label_smoothing < 1:
            raise OptionError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise OptionError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def resolved_weight_decay(self) -> float:
        """The weight decay in force: the given one, or the optimizer's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]

    def to_json(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict."""
        data = attrs.asdict(self)
        data["augment"] = list(self.augment)
        data["regularizer"] = list(self.regularizer)
        data["lr_mult"] = list(self.lr_mult)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        """Rebuild a recipe from :meth:`to_json` output (as read from config.json)."""
        return cls.from_kwargs(**data)
