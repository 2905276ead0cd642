"""A training run as lifecycle hooks see it: what it was resolved to (:class:`Resolved`,
fixed once assembled), how far it has come (:class:`Progress`) and the live parts that
train (:class:`Run`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch

from tlplug.compute.distributed import SOLO, World
from tlplug.compute.precision import FP32, Compiled, Numerics
from tlplug.console import Console
from tlplug.errors import TlplugError
from tlplug.model.adapters import Adapter
from tlplug.model.transfer import TransferModel
from tlplug.recipe import Recipe
from tlplug.train.ema import WeightAverage
from tlplug.train.loss import TrainingLoss
from tlplug.train.stages import Stage

if TYPE_CHECKING:
    from tlplug.data.loaders import Loaders
    from tlplug.data.pipeline import Pipeline
    from tlplug.data.sources import Splits
    from tlplug.plugins.host import PluginHost
    from tlplug.plugins.resolve import Parts


@attrs.frozen
class Source:
    """Where a stage's training steps get their inputs, and why.

    ``cache`` is the cache the stage could train on: ``features`` (only the head trains:
    backbone features computed once), ``prefix`` (the top of the backbone trains too: the
    frozen layers below ``cut`` run once, each step runs the layers above it) or None (the
    stage trains from the stem, or trains biases: every step runs on images). ``used``
    says whether it does; ``reason`` why not, as a word the console turns into a line:
    ``off`` (``--cache-features off``), ``bn-train``, ``regularizer`` or ``augmentation``
    (with the ``names`` that need images), ``no-cut`` (no cut replays exactly). When used,
    ``names`` are the augmentations the cache leaves out (``--cache-features on``), and a
    feature cache holds ``views`` augmented draws of every training image, drawn with the
    random augmentations ``drawn``; or, when ``exact``, every combination of their outcomes
    once (:attr:`~tlplug.data.pipeline.Pipeline.outcomes`). ``stepped`` names the
    regularizers whose penalty a cached head must see at every step: it trains epoch by
    epoch instead of by the converged probe.
    """

    cache: Literal["features", "prefix"] | None = None
    used: bool = False
    reason: str = ""
    names: tuple[str, ...] = ()
    cut: str | None = None
    views: int = 0  # augmented views of each training image cached (0: the images as they are)
    drawn: tuple[str, ...] = ()  # the random augmentations the views are drawn with
    exact: bool = False  # the views are every outcome of ``drawn``, not draws
    stepped: tuple[str, ...] = ()  # regularizers that make a head train by epochs, not the probe


@attrs.frozen
class Step:
    """One training step as :func:`tlplug_step_end <tlplug.plugins.hookspecs.tlplug_step_end>`
    sees it: the epoch, the step's number in it (from 1) and in the run, the images it
    trained on and their mean loss; ``skipped`` when the loss was not finite."""

    epoch: int
    index: int
    global_step: int
    images: int
    loss: float
    skipped: bool = False


@attrs.frozen
class BackboneRecord:
    """The backbone a run built: its timm/torchvision name, the weights it started from
    (a description: ``pretrained``, a file or ``random``), whether those are trained
    weights, the loading report of ``--weights``, its feature width and the keys of its
    own classifier (dropped)."""

    model: str
    weights: str
    pretrained: bool
    weights_report: str | None
    num_features: int
    classifier_keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The record as config.json's ``resolved.backbone`` holds it."""
        return {**attrs.asdict(self), "classifier_keys": list(self.classifier_keys)}


@attrs.frozen
class Resolved:
    """What the engine made of a run's recipe, fixed once the run is assembled: what
    config.json's ``resolved`` part is written from.

    The fields the live run reads are typed; ``details`` holds the rest, JSON-ready (the
    data config, the strategies chosen with their options, weight decay, numerics,
    warnings), written and never read back while the run trains. The record is never
    changed in place: ``--lr auto`` replaces it by one with the LR the range test chose.
    """

    backbone: BackboneRecord
    img_size: int
    classes: tuple[str, ...]
    data: Mapping[str, Any]  # the source's description and the counts of images per split
    groups: tuple[tuple[str, int], ...]  # (layer group, parameters), stem to head
    plan: tuple[Stage, ...]
    batch_size: int  # images per step, as --auto-batch-size left it
    steps_per_epoch: int  # optimizer steps
    lr_multipliers: Mapping[str, float]
    decoded_images: Mapping[str, Any]  # the decode-once plan (``kept``: it is used)
    lr: float | None = None  # the base LR --lr auto chose (None: the recipe's)
    lr_find: Mapping[str, Any] | None = None  # --lr auto's range test, summarized
    details: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """config.json's ``resolved`` part: a fresh, JSON-ready dict."""
        details = copy.deepcopy(dict(self.details))
        record = {
            **details,
            "backbone": {**self.backbone.to_json(), **details.get("backbone", {})},
            "img_size": self.img_size,
            "classes": list(self.classes),
            "data": copy.deepcopy(dict(self.data)),
            "groups": [{"name": name, "params": params} for name, params in self.groups],
            "plan": [stage.to_json() for stage in self.plan],
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "lr_multipliers": dict(self.lr_multipliers),
            "decoded_images": copy.deepcopy(dict(self.decoded_images)),
        }
        if self.lr is not None:
            record |= {"lr": self.lr, "lr_find": copy.deepcopy(self.lr_find)}
        return record


@attrs.define
class Progress:
    """How far a run has come: the epoch (1-based once training starts; between epochs,
    the epochs completed), the stage in force (an index into the plan; -1 before the
    first) and the optimizer steps taken."""

    epoch: int = 0
    stage: int = -1
    step: int = 0


@attrs.define
class Run:
    """Everything a run is made of while it trains; passed to every lifecycle hook.

    A plugin keeps state of its own for the run in :attr:`plugin_data`, under a key of its
    own (its name); it lives as long as the run object and is not saved."""

    recipe: Recipe
    resolved: Resolved
    model: TransferModel
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    run_dir: Path
    device: torch.device
    numerics: Numerics = FP32
    progress: Progress = attrs.field(factory=Progress)
    world: World = SOLO  # the processes that train the run together (torchrun)
    scratch: Path | None = None  # where a process other than rank 0 keeps temporary files
    config: dict[str, Any] = attrs.field(factory=dict)  # config.json, made as training starts
    history: list[dict[str, Any]] = attrs.field(factory=list)
    adapter: Adapter | None = None
    loss: TrainingLoss | None = None  # cross-entropy and the regularizers' penalties
    compiled: Compiled | None = None  # --compile: the model as training steps call it
    ema: WeightAverage | None = None  # --ema: the moving average of the weights
    parts: Parts | None = None  # the resolved strategies, by kind
    data: Splits | None = None  # the classes and images, with the files left out
    loaders: Loaders | None = None
    pipeline: Pipeline | None = None  # augmentations and normalization
    console: Console = attrs.field(factory=Console)
    plugins: PluginHost | None = None
    source: Source = attrs.field(factory=Source)  # where the current stage's inputs come from
    plugin_data: dict[str, Any] = attrs.field(factory=dict)  # plugins' own state, by their key

    @property
    def plan(self) -> tuple[Stage, ...]:
        """The freeze plan: the stages in order."""
        return self.resolved.plan

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label order."""
        return self.resolved.classes

    @property
    def scratch_dir(self) -> Path:
        """Where this process keeps temporary files (decoded images, spilled caches): the
        run directory, or in a process other than rank 0, a temporary folder of its own."""
        return self.scratch or self.run_dir

    @property
    def epoch(self) -> int:
        """:attr:`Progress.epoch`."""
        return self.progress.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.progress.epoch = value

    @property
    def stage(self) -> int:
        """:attr:`Progress.stage`."""
        return self.progress.stage

    @stage.setter
    def stage(self, value: int) -> None:
        self.progress.stage = value

    @property
    def step(self) -> int:
        """:attr:`Progress.step`."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = value

    @property
    def hook(self) -> Any:
        """The plugins' hook relay, for calling lifecycle hooks. In a data-parallel run,
        rank 0 alone calls them: the other processes train in step with it and are quiet."""
        return self.plugins.hook if self.world.main else _QUIET

    @property
    def penalties(self) -> tuple[Any, ...]:
        """The regularizers' penalties, in the order ``run.parts["regularizers"]`` names
        them (each what its factory returned)."""
        return tuple(self.loss.penalties) if self.loss is not None else ()

    @property
    def batch_augment(self):
        """The batch-level augmentation (mixup, cutmix) on the device, or None."""
        return self.pipeline.batch if self.pipeline is not None else None

    @property
    def skipped(self):
        """The data files left out, with their reasons."""
        return self.data.skipped if self.data is not None else ()

    def schedule_state(self) -> dict[str, Any]:
        """Everything the freeze and LR schedules need to continue, JSON-ready.

        Taken between epochs, it holds the plan, the stage in force, the epochs and steps
        done and the LR scheduler's state (the optimizer's own state is separate).
        """
        return {
            "plan": [stage.to_json() for stage in self.plan],
            "stage": self.stage,
            "epoch": self.epoch,
            "step": self.step,
            "lr_scheduler": self.lr_scheduler.state_dict(),
        }

    def load_schedule_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`schedule_state` output taken in a run with the same plan."""
        plan = tuple(Stage.from_json(s) for s in state["plan"])
        if plan != self.plan:
            raise TlplugError("the saved schedule state is for a different freeze plan")
        self.stage, self.epoch, self.step = state["stage"], state["epoch"], state["step"]
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


class _NoHook:
    """A lifecycle hook no plugin implements: calling it does nothing."""

    def __call__(self, **kwargs: Any) -> list[Any]:
        return []

    def get_hookimpls(self) -> list[Any]:
        return []


class _QuietRelay:
    """The hook relay of a process other than rank 0: every lifecycle hook is a no-op."""

    def __getattr__(self, name: str) -> _NoHook:
        return _NoHook()


_QUIET = _QuietRelay()
