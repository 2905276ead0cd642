"""The recipe: every choice a run makes, mirrored one for one by the ``tlplug run`` options.

A recipe holds the strategies a run uses (a name and options per kind: ``head``,
``head_opts``), generated from the rows of :mod:`tlplug.plugins.kinds`, plus the general settings
of :class:`Settings`, each with the help text its CLI option shows. A run's config.json
stores the recipe with what the engine resolved from it, which is enough to rebuild the
trained model with no other input.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from tlplug.errors import OptionError, close_matches, flag
from tlplug.plugins.kinds import BUILTIN_KINDS, Kind
from tlplug.plugins.options import coerce

AUTO = "auto"  # the value that leaves a choice to tlplug: --lr, --schedule, --folds, ...
DEFAULT_VIEWS = 4  # augmented views a feature cache holds at most, unless --cache-views says
Optimizer = Literal["sgd", "adam", "adamw"]
BnPolicy = Literal["frozen", "eval", "train"]
CacheMode = Literal["auto", "on", "off"]
Balance = Literal["off", "sampler", "loss"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Probe = Literal["converge", "epochs"]
AugmentPath = Literal["auto", "batched", "per-image"]

# Weight decay per optimizer when none is given: decoupled decay needs a larger value.
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}


def setting(default: Any, help: str, **cli: Any) -> Any:
    """A recipe setting with the help text of its CLI option; ``cli`` may set ``shown``
    (the default as the help shows it, "" for none), ``metavar`` and ``path``."""
    return attrs.field(default=default, metadata={"help": help, **cli})


@attrs.define(kw_only=True)
class Settings:
    """The general settings of a run; :data:`Recipe` adds the strategy choices."""

    pretrained: bool = setting(
        True, "Start from the provider's pretrained weights.", shown="pretrained"
    )
    weights: str | None = setting(
        None, "Backbone weights file (.safetensors, or a state-dict .pth/.pt).", path=True
    )
    weights_partial: bool = setting(
        False,
        "Load a --weights file made for another architecture in part: the tensors "
        "whose names and shapes match; the rest of the backbone stays as built.",
        shown="",
    )
    teacher: str | None = setting(
        None,
        "A finished run whose model teaches this one (distillation): the student learns "
        "from its outputs on the same images as well as from the labels (--distill-loss).",
        path=True,
        metavar="RUN",
    )
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy loss.")
    balance: Balance = setting(
        "off",
        "Class imbalance: draw classes equally often (sampler) or weight the loss by "
        "inverse class frequency (loss).",
    )
    optimizer: Optimizer = setting("adamw", "Optimizer.")
    lr: float | Literal["auto"] = setting(
        1e-3,
        "Base learning rate; auto: the valley of an LR range test run first on the run's own "
        "recipe (see 'tlplug lr-find').",
    )
    lr_decay: float | None = setting(
        None, "Layer-wise LR decay G: group i below the head trains at lr x G^i.", shown=""
    )
    lr_mult: tuple[float, ...] = setting(
        (),
        "LR multiplier per group, stem to head (see 'tlplug groups BACKBONE').",
        metavar="M,M,...",
        shown="",
    )
    weight_decay: float | None = setting(
        None, "Weight decay.", shown="sgd 5e-4, adam 0, adamw 0.01"
    )
    decay_norm_bias: bool = setting(
        False, "Apply weight decay to biases and norm parameters too (off by default).", shown=""
    )
    momentum: float = setting(0.9, "SGD momentum.")
    bn_policy: BnPolicy = setting(
        "frozen",
        "BatchNorm of frozen groups: frozen (eval mode, statistics kept), eval (every "
        "BatchNorm in eval mode) or train (statistics follow the data).",
    )
    max_groups: int | None = setting(
        None,
        "Merge the backbone's layer groups into at most this many (stem included).",
        shown="",
    )
    epochs: int = setting(5, "Epochs to train.")
    val_every: int = setting(
        1, "Validate (and keep the best weights) every N epochs and after the last.", metavar="N"
    )
    batch_size: int = setting(32, "Images per batch.")
    img_size: int | None = setting(None, "Input size in pixels.", shown="the backbone's")
    seed: int = setting(0, "Random seed.")
    device: str = setting("auto", "auto, cpu or cuda.")
    workers: int | None = setting(
        None,
        "Data loader processes.",
        shown="GPU cores - 1 up to 8; CPU 0 up to 4 cores, then a quarter of them up to 4",
    )
    val_split: float | None = setting(
        None,
        "Fraction held out for validation when DATA has no val/ folder; 0 trains "
        "without validation (the last epoch's weights are kept).",
        shown="0.2",
    )
    skip_nonfinite: int = setting(
        0, "Batches with a NaN or infinite loss to step over before stopping."
    )
    cache_features: CacheMode = setting(
        "auto",
        "Train the head on backbone features computed once while only the head trains "
        "(augmented views of them with random augmentation): auto unless a batch "
        "augmentation (mixup, cutmix) needs the images; on: even then, without it.",
    )
    cache_views: int | None = setting(
        None,
        "Augmented views of each image the feature cache holds.",
        shown="a converged probe: every outcome of the augmentations if they list them, "
        f"else {DEFAULT_VIEWS}; else one per epoch of the stage, at most {DEFAULT_VIEWS}",
        metavar="K",
    )
    probe: Probe = setting(
        "converge",
        "How a stage that trains only a linear head on cached features trains it: converge "
        "(L-BFGS to the optimum, L2 strength chosen on held-out training images) or epochs "
        "(the optimizer, epoch by epoch).",
    )
    augment_path: AugmentPath = setting(
        "auto",
        "Where the random image augmentations run: batched (each image's own draws, the "
        "pixel work on the whole batch on the device), per-image (in the loader) or auto "
        "(batched on a GPU when every chosen one has a batched form: crop, flip, "
        "color-jitter).",
    )
    precision: Precision = setting(
        "auto", "Autocast precision; auto is bf16 where the CPU or GPU computes it natively."
    )
    channels_last: bool | None = setting(
        None, "Channels-last memory layout.", shown="on for convnets"
    )
    compile: bool = setting(
        False,
        "Compile the backbone's training forward pass with torch.compile. The first step "
        "of each stage waits for compilation; measure before relying on it.",
        shown="",
    )
    auto_batch_size: bool = setting(
        False, "Halve --batch-size until a training step fits in memory.", shown=""
    )
    accumulate: int = setting(
        1,
        "Add up the gradients of N batches per optimizer step (a batch N times larger).",
        metavar="N",
    )
    ema: float | None = setting(
        None,
        "Keep an exponential moving average of the weights with this decay (0.999); it "
        "is validated every epoch and its weights are saved when they score best.",
        metavar="DECAY",
        shown="",
    )
    patience: int | None = setting(
        None,
        "Stop early when validation accuracy has not improved for N validations.",
        metavar="N",
        shown="",
    )
    plots: bool = setting(
        True,
        "Draw training curves, the confusion matrix and the schedule into the run directory.",
        shown="plots",
    )
    keep_state: bool = setting(
        False,
        "Keep the resume state once the run has finished, to continue it exactly "
        "later; otherwise a finished run keeps what predict, eval and export need.",
        shown="",
    )

    @classmethod
    def from_kwargs(cls, **given: Any) -> Settings:
        """Build a recipe from keyword arguments, converting and checking every value."""
        types = field_types(cls)
        values = {}
        for key, value in given.items():
            if key not in types:
                matches = close_matches(key, types)
                hint = f"; did you mean '{matches[0]}'?" if matches else ""
                raise OptionError(f"unknown recipe setting {key!r}{hint}")
            values[key] = _convert(key, value, types[key], kind_of(cls, key))
        recipe = cls(**values)
        recipe.check()
        return recipe

    def check(self) -> None:
        """Raise :class:`OptionError` for values no run can use."""
        check_settings(self)

    @property
    def resolved_weight_decay(self) -> float:
        """The weight decay in force: the given one, or the optimizer's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]

    def to_json(self) -> dict[str, Any]:
        """Return the recipe as a JSON-ready dict: the strategies first, then the settings."""
        data = {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}
        order = sorted(data, key=lambda name: kind_of(type(self), name) is None)
        return {name: _jsonable(data[name]) for name in order}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, strict: bool = True) -> Settings:
        """Rebuild a recipe from :meth:`to_json` output (as read from config.json); with
        ``strict`` False, keys this recipe class does not know (a kind added by a plugin
        that is not installed now) are left out."""
        if not strict:
            data = {k: v for k, v in data.items() if k in field_types(cls)}
        return cls.from_kwargs(**data)


def check_settings(settings: Settings) -> None:
    """Raise :class:`OptionError` for the first value of ``settings`` no run can use."""
    positive = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "val_every": settings.val_every,
    }
    for name, value in positive.items():
        if value != AUTO and value <= 0:  # --lr auto: a range test chooses it
            raise OptionError(f"{flag(name)} must be positive, got {value}")
    if settings.img_size is not None and settings.img_size < 16:
        raise OptionError(f"{flag('img_size')} must be at least 16, got {settings.img_size}")
    if settings.val_split is not None and not 0 <= settings.val_split < 1:
        raise OptionError(
            f"{flag('val_split')} must be at least 0 (0: no validation) and below 1, "
            f"got {settings.val_split}"
        )
    if settings.cache_views is not None and settings.cache_views < 1:
        raise OptionError(f"{flag('cache_views')} must be at least 1, got {settings.cache_views}")
    if settings.accumulate < 1:
        raise OptionError(f"{flag('accumulate')} must be at least 1, got {settings.accumulate}")
    if settings.ema is not None and not 0 < settings.ema < 1:
        raise OptionError(
            f"{flag('ema')} must be a decay between 0 and 1 (0.999), got {settings.ema}"
        )
    if settings.patience is not None and settings.patience < 1:
        raise OptionError(f"{flag('patience')} must be at least 1, got {settings.patience}")
    if settings.val_split == 0 and (settings.patience or settings.ema):
        used = flag("patience") if settings.patience else flag("ema")
        raise OptionError(f"{used} needs validation; drop it or {flag('val_split', 0)}")
    if settings.lr_decay is not None and not 0 < settings.lr_decay <= 1:
        raise OptionError(f"{flag('lr_decay')} must be in (0, 1], got {settings.lr_decay}")
    if settings.lr_decay is not None and settings.lr_mult:
        raise OptionError(f"give {flag('lr_decay')} or {flag('lr_mult')}, not both")
    if any(not m >= 0 for m in settings.lr_mult):
        raise OptionError(
            f"{flag('lr_mult')} multipliers must be >= 0, got {list(settings.lr_mult)}"
        )
    if settings.max_groups is not None and settings.max_groups < 1:
        raise OptionError(f"{flag('max_groups')} must be at least 1, got {settings.max_groups}")
    if settings.weight_decay is not None and settings.weight_decay < 0:
        raise OptionError(f"{flag('weight_decay')} must be >= 0, got {settings.weight_decay}")
    if settings.skip_nonfinite < 0:
        raise OptionError(f"{flag('skip_nonfinite')} must be >= 0, got {settings.skip_nonfinite}")
    if settings.workers is not None and settings.workers < 0:
        raise OptionError(f"{flag('workers')} must be >= 0, got {settings.workers}")
    if settings.weights is not None and "\x00" in settings.weights:
        raise OptionError(f"{flag('weights')} contains a NUL byte; give the path of a weights file")
    if settings.teacher is not None and "\x00" in settings.teacher:
        raise OptionError(f"{flag('teacher')} contains a NUL byte; give a run directory")
    if not 0 <= settings.label_smoothing < 1:
        raise OptionError(
            f"{flag('label_smoothing')} must be in [0, 1), got {settings.label_smoothing}"
        )
    if settings.device not in ("auto", "cpu") and not settings.device.startswith("cuda"):
        raise OptionError(f"{flag('device')} must be auto, cpu or cuda, got {settings.device!r}")


def recipe_class(kinds: Iterable[Kind], base: type[Settings] = Settings) -> type[Settings]:
    """A recipe class: ``base`` plus a name field and an options field per kind (only the
    options for a kind that ``--data`` names; neither for a command's kind)."""
    fields: dict[str, Any] = {}
    for kind in kinds:
        meta = {"kind": kind}
        if kind.scope == "recipe":
            fields[kind.field] = attrs.field(
                default=kind.default, type=_name_type(kind), metadata=meta
            )
        if kind.scope in ("recipe", "data"):
            opts = dict[str, dict[str, Any]] if kind.many else dict[str, Any]
            fields[kind.options_field] = attrs.field(factory=dict, type=opts, metadata=meta)
    made = attrs.make_class(base.__name__, fields, bases=(base,), kw_only=True)
    made.__module__, made.__qualname__ = base.__module__, base.__qualname__
    return made


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The declared type of every field of a recipe class, by name."""
    attrs.resolve_types(cls, globalns=globals())
    return {f.name: f.type for f in attrs.fields(cls)}


def kind_of(cls: type, name: str) -> Kind | None:
    """The kind whose choice or options field ``name`` is, or None for a general setting."""
    return getattr(attrs.fields_dict(cls).get(name), "metadata", {}).get("kind")


def _name_type(kind: Kind) -> Any:
    if kind.many:
        return tuple[str, ...]
    return str | None if kind.default is None else str


def _convert(key: str, value: Any, expected: Any, kind: Kind | None) -> Any:
    if key.endswith("_opts") and kind is not None:
        if value is not None and not isinstance(value, dict):
            raise OptionError(f"setting '{key}' must be a mapping of options")
        return dict(value or {})
    if value is None:
        if type(None) not in typing.get_args(expected):
            raise OptionError(f"setting '{key}' needs a value")
        return None
    value = coerce(value, expected, flag(key))
    if kind is not None and kind.many and "none" in value:
        if len(value) > 1:
            others = ", ".join(v for v in value if v != "none")
            raise OptionError(
                f"{kind.flag} none means no {kind.noun}; drop it or the others ({others})"
            )
        return ()
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


#: The recipe of a run with the built-in kinds: ``Recipe(backbone="timm:resnet50", lr=3e-4)``.
Recipe = recipe_class(BUILTIN_KINDS)
Recipe.__name__ = Recipe.__qualname__ = "Recipe"
Recipe.__doc__ = """The choices of one run: a strategy per kind (``head``, ``head_opts``...)
and the general :class:`Settings`; field names match the CLI options (``--lr-schedule``:
``lr_schedule``)."""
