"""One optimizer per run, built once, with one parameter group per layer group.

Freezing never rebuilds it: a frozen group's parameters just receive no gradient, which
every torch optimizer skips. State of a group that trained is kept across stage changes,
a group that never trained has none yet, and LR schedulers see the same groups from the
first step to the last.

Per-group learning rates are multipliers on the base LR (``--lr-decay``, ``--lr-mult``).
Biases, norm parameters and the backbone's own no-weight-decay parameters (ViT position
embeddings, class tokens) get no weight decay unless asked; a layer group with both kinds
is two torch param groups that share its ``name``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from tlplug.errors import OptionError, TlplugError
from tlplug.model.transfer import BACKBONE_PREFIX, TransferModel
from tlplug.recipe import Recipe


def lr_multipliers(groups: Sequence[str], recipe: Recipe) -> dict[str, float]:
    """Each group's LR multiplier: ``lr_decay ** i`` with i counted from the head, or
    ``lr_mult`` given stem to head, or 1."""
    if recipe.lr_mult:
        if len(recipe.lr_mult) != len(groups):
            raise OptionError(
                f"--lr-mult gives {len(recipe.lr_mult)} multipliers for {len(groups)} groups; "
                f"give one per group, stem to head: {', '.join(groups)}"
            )
        return {g: float(m) for g, m in zip(groups, recipe.lr_mult, strict=True)}
    decay = recipe.lr_decay if recipe.lr_decay is not None else 1.0
    last = len(groups) - 1
    return {g: decay ** (last - i) for i, g in enumerate(groups)}


# The fused kernels update every parameter of a group in one pass: on CPU, AdamW's step over
# resnet18's layer4 takes 5 ms instead of 30.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def build_optimizer(
    model: TransferModel, recipe: Recipe, multipliers: dict[str, float]
) -> torch.optim.Optimizer:
    """Create the recipe's optimizer over every group of ``model`` (frozen ones included)."""
    decay = recipe.resolved_weight_decay
    exempt = None if recipe.decay_norm_bias else _no_decay_names(model)
    groups: list[dict[str, Any]] = []
    for name in model.group_names():
        params = dict(zip(model.group_param_names(name), model.group_params(name), strict=True))
        with_decay = [p for n, p in params.items() if not _exempt(n, p, exempt)]
        without = [p for n, p in params.items() if _exempt(n, p, exempt)]
        common = {"name": name, "lr": recipe.lr * multipliers[name], "lr_mult": multipliers[name]}
        for members, value in ((with_decay, decay), (without, 0.0)):
            if members:
                groups.append({"params": members, "weight_decay": value, **common})
    kind = OPTIMIZERS[recipe.optimizer]
    options: dict[str, Any] = {"lr": recipe.lr, "weight_decay": decay}
    if recipe.optimizer == "sgd":
        options["momentum"] = recipe.momentum
    try:
        return kind(groups, fused=True, **options)
    except RuntimeError:  # parameters on a device or of a dtype without fused kernels
        return kind(groups, **options)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current learning rate of each layer group, by name."""
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def _no_decay_names(model: TransferModel) -> tuple[str, ...]:
    """Full names of the parameters the backbone asks to exempt (timm's ``no_weight_decay``)."""
    ask = getattr(model.backbone, "no_weight_decay", None)
    names = ask() if callable(ask) else ()
    return tuple(BACKBONE_PREFIX + n for n in names)


def _exempt(name: str, param: torch.nn.Parameter, names: tuple[str, ...] | None) -> bool:
    """True for a bias, a norm weight or a listed parameter; never when ``names`` is None."""
    if names is None:
        return False
    return (
        param.ndim <= 1
        or name.endswith(".bias")
        or any(name == n or name.startswith(n + ".") for n in names)
    )


class StageScaledScheduler:
    """A run's LR scheduler, with the freeze stage's LR scale and warmup applied on top.

    The wrapped scheduler always sees its own, unscaled learning rates (the factors are
    taken off before it steps and put back after), so chainable schedulers and
    ``ReduceLROnPlateau`` work unchanged. ``ReduceLROnPlateau`` steps once per epoch with
    the validation loss; every other scheduler steps after every optimizer step. Groups
    that a stage newly unfreezes can warm up: their factor ramps linearly to the stage's
    scale over the stage's first ``warmup_steps`` steps.
    """

    def __init__(self, scheduler: Any, optimizer: torch.optim.Optimizer):
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.scale = 1.0
        self.warm: tuple[str, ...] = ()  # groups warming up
        self.warmup_steps = 0
        self.warmed = 0  # steps taken since the warmup began
        self.factors = [1.0] * len(optimizer.param_groups)  # applied on top, per torch group
        self.backoff = 1.0  # on every group for the rest of the run (a rolled-back stage)
        self.per_epoch = isinstance(scheduler, ReduceLROnPlateau)

    def set_scale(self, scale: float, warm: Sequence[str] = (), warmup_steps: int = 0) -> None:
        """From now on scale every group's LR by ``scale``, ramping the ``warm`` groups' up
        to it over ``warmup_steps`` steps."""
        self.scale, self.warm, self.warmup_steps, self.warmed = scale, tuple(warm), warmup_steps, 0
        self._apply()

    def back_off(self, factor: float) -> None:
        """Multiply every group's LR by ``factor`` from now to the end of the run."""
        self.backoff *= factor
        self._apply()

    def step(self) -> None:
        """Advance after one optimizer step (per-epoch schedulers only move the warmup)."""
        self.warmed += 1
        if self.per_epoch:
            self._apply()
        else:
            self._unscaled(self.scheduler.step)

    def skip(self, steps: int) -> None:
        """Advance ``steps`` steps with no optimizer step between (a stage whose head was
        fit outright, a run continued past its end)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(steps):
                self.step()

    def epoch_end(self, val_loss: float) -> None:
        """Advance a per-epoch scheduler with the epoch's validation loss."""
        if self.per_epoch:
            self._unscaled(lambda: self.scheduler.step(val_loss))

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: the wrapped scheduler's, the stage scale, the warmup and the
        backoff."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "scale": self.scale,
            "warm": list(self.warm),
            "warmup_steps": self.warmup_steps,
            "warmed": self.warmed,
            "backoff": self.backoff,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the optimizer's LRs are restored with it)."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.scale = state["scale"]
        self.warm = tuple(state.get("warm", ()))
        self.warmup_steps, self.warmed = state.get("warmup_steps", 0), state.get("warmed", 0)
        self.backoff = state.get("backoff", 1.0)
        self.factors = self._wanted()  # what the restored LRs carry

    def _wanted(self) -> list[float]:
        ramp = 1.0
        if self.warmed < self.warmup_steps:
            ramp = (self.warmed + 1) / (self.warmup_steps + 1)  # never 0: factors divide
        return [
            self.scale * self.backoff * (ramp if group.get("name") in self.warm else 1.0)
            for group in self.optimizer.param_groups
        ]

    def _apply(self, wanted: list[float] | None = None) -> None:
        wanted = self._wanted() if wanted is None else wanted
        for group, old, new in zip(self.optimizer.param_groups, self.factors, wanted, strict=True):
            if new != old:
                group["lr"] *= new / old
        self.factors = wanted

    def _unscaled(self, advance) -> None:
        if all(f == 1.0 for f in self.factors) and not self.warm:
            advance()
            return
        self._apply([1.0] * len(self.factors))
        advance()
        self._apply()


def build_scheduler(
    choice: Any, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> StageScaledScheduler:
    """The chosen LR schedule over the whole run, wrapped to apply stage LR scales."""
    scheduler = choice.strategy.factory(
        optimizer, epochs * steps_per_epoch, steps_per_epoch, **choice.options
    )
    if not callable(getattr(scheduler, "step", None)) or not hasattr(scheduler, "state_dict"):
        raise TlplugError(
            f"LR schedule '{choice.strategy.name}' returned {type(scheduler).__name__}, "
            "not a torch LR scheduler"
        )
    return StageScaledScheduler(scheduler, optimizer)


def stage_lrs(optimizer: torch.optim.Optimizer, groups: Sequence[str], stage: Any) -> dict:
    """The learning rate each of ``stage``'s training groups has now, stem to head."""
    lrs = group_lrs(optimizer)
    return {name: lrs[name] for name in groups if name in stage.training}
