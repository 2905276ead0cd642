"""The kinds of strategy plugins register, one row each.

A row is all tlplug needs to know of a kind: its registration hook, the words for messages,
the recipe fields that name the choice and its options (``head`` and ``head_opts``), the
CLI flags that set them (``--head``, ``--head-opt``) and where config.json records what the
name resolved to. :mod:`tlplug.recipe`, :func:`tlplug.plugins.resolve.resolve`, the ``tlplug run``
options and config.json are all derived from these rows, and a plugin adds a kind of its own
with the ``tlplug_add_kinds`` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from tlplug.errors import TlplugError
from tlplug.plugins.marks import rank

Scope = Literal["recipe", "data", "command"]


def _whole(value: str) -> str:
    return value


def split_backbone(spec: str) -> tuple[str, str]:
    """Split ``"timm:resnet50"`` into ``("timm", "resnet50")``."""
    provider, sep, model = spec.partition(":")
    if not sep or not provider or not model:
        raise TlplugError(
            f"backbone '{spec}' must be PROVIDER:NAME, for example timm:{spec or 'resnet50'}"
            f" or torchvision:{spec or 'resnet50'}"
        )
    return provider, model


def _provider(value: str) -> str:
    return split_backbone(value)[0]


@attrs.frozen
class Kind:
    """A kind of strategy.

    ``scope`` says who chooses it: ``recipe`` (a run's recipe names it: ``--head``),
    ``data`` (the ``--data`` value names it; only its options are in the recipe) or
    ``command`` (a command's flag names it, as ``tlplug export --format``).
    """

    key: str  # plural, as in ``tlplug list heads``
    hook: str  # the registration hook
    noun: str  # for messages: "unknown head 'x'"
    flag: str  # the flag naming the choice; ``<flag>-opt`` sets its options
    default: Any = None  # the recipe's choice when none is given; None: nothing chosen
    many: bool = False  # several at once (``--augment flip --augment crop``)
    scope: Scope = "recipe"
    help: str = ""  # the flag's help text
    record: str = ""  # where config.json's "resolved" part keeps the choice (dotted path)
    command: str = "run"  # the command whose flag chooses it
    name_of: Callable[[str], str] = _whole  # the registered name inside a recipe value
    order: Callable[[Any], Any] | None = None  # sort key of the chosen strategies (many)

    @property
    def field(self) -> str:
        """The recipe field naming the choice (``lr_schedule`` for ``--lr-schedule``)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def options_field(self) -> str:
        """The recipe field holding the options (``head_opts``)."""
        return f"{self.field}_opts"

    @property
    def options_flag(self) -> str:
        """The CLI flag setting an option (``--head-opt``)."""
        return f"{self.flag}-opt"

    @property
    def record_path(self) -> tuple[str, ...]:
        """Keys of config.json's "resolved" part leading to the recorded choice."""
        return tuple((self.record or self.field).split("."))


BUILTIN_KINDS: tuple[Kind, ...] = (
    Kind(
        "backbones",
        "tlplug_register_backbones",
        "backbone provider",
        "--backbone",
        default="timm:resnet18",
        record="backbone.provider",
        name_of=_provider,
        help="PROVIDER:NAME, e.g. timm:resnet50 or torchvision:vit_b_16.",
    ),
    Kind(
        "heads",
        "tlplug_register_heads",
        "head",
        "--head",
        default="linear",
        help="Classification head.",
    ),
    Kind(
        "schedules",
        "tlplug_register_schedules",
        "schedule",
        "--schedule",
        default="freeze-unfreeze",
        help="Freeze schedule: which layer groups train when; auto searches them "
        "(see 'tlplug search').",
    ),
    Kind(
        "lr-schedules",
        "tlplug_register_lr_schedules",
        "LR schedule",
        "--lr-schedule",
        default="cosine",
        help="Learning-rate schedule.",
    ),
    Kind(
        "augmentations",
        "tlplug_register_augmentations",
        "augmentation",
        "--augment",
        default=("flip",),
        many=True,
        record="augmentations",
        order=rank,
        help="Training augmentation, repeatable; they run in a fixed order (crops, flips, "
        "colour, then erasing, then mixup or cutmix), recorded in config.json; 'none' for none.",
    ),
    Kind("data-sources", "tlplug_register_data_sources", "data source", "--data", scope="data"),
    Kind(
        "adapters",
        "tlplug_register_adapters",
        "adapter",
        "--adapter",
        help="Adapter added to the backbone, e.g. lora (from a plugin).",
    ),
    Kind(
        "regularizers",
        "tlplug_register_regularizers",
        "regularizer",
        "--regularizer",
        default=(),
        many=True,
        record="regularizers",
        help="Loss regularizer, repeatable (from a plugin, e.g. l2-sp).",
    ),
    Kind(
        "distillation-losses",
        "tlplug_register_distillation_losses",
        "distillation loss",
        "--distill-loss",
        default="kd",
        help="How the student learns from --teacher's outputs: kd (the teacher's softened "
        "probabilities, blended with the labels' cross-entropy). Used only with --teacher.",
    ),
    Kind(
        "loggers",
        "tlplug_register_loggers",
        "logger",
        "--logger",
        default=("csv",),
        many=True,
        record="loggers",
        help="Where the run's numbers go besides metrics.jsonl, repeatable: csv "
        "(metrics.csv), and those of plugins (tensorboard, mlflow); 'none' for none.",
    ),
    Kind(
        "exporters",
        "tlplug_register_exporters",
        "export format",
        "--format",
        scope="command",
        command="export",
        help="File format to export to.",
    ),
)

#: The built-in kinds by key; :attr:`tlplug.plugins.host.PluginHost.kinds` adds plugins' kinds.
KINDS: dict[str, Kind] = {kind.key: kind for kind in BUILTIN_KINDS}
