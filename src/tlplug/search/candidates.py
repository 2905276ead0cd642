"""What ``tlplug search`` tries: each freeze schedule that runs without options, crossed with
learning rates around the recipe's (and a layer-wise LR decay for schedules that train the
backbone), with a cost estimate per candidate for planning the rungs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from tlplug.errors import OptionError
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import choose, make_plan

LR_FACTORS = (1.0, 1 / 3, 3.0)  # times the recipe's LR, in the order they are tried
LR_DECAY = 0.7  # the layer-wise LR decay tried beside none, where the backbone trains
HOLD_OUT = 0.2  # of the training images, held out to score candidates on
EVAL_SHARE = 1 / 3  # an image validated costs about a third of one trained
# An epoch that trains only the head, in full epochs: the first of a stage computes the
# cached features (a forward pass, no backward), the others train on them.
HEAD_FIRST, HEAD_MORE = 0.35, 0.02
# Tried first when the budget takes only some, and first among equal scores: the strongest
# usual choices, then the rest. With fewer than FEW_SHOT training images in the median
# class, FEW_SHOT_PRIORITY: the less a schedule changes the pretrained weights, the more it
# is to be trusted there (bench/quality.py at 12 images a class: full 0.625, lp-ft 0.795).
PRIORITY = ("full", "freeze-unfreeze", "gradual", "lp-ft", "linear-probe")
FEW_SHOT_PRIORITY = ("lp-ft", "linear-probe", "gradual", "freeze-unfreeze", "full")
FEW_SHOT = 25
GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")  # a typical backbone


@attrs.frozen
class Candidate:
    """One recipe to try: a schedule with a learning rate and a layer-wise LR decay."""

    schedule: str
    lr: Any
    lr_decay: float | None = None

    def label(self) -> str:
        """``freeze-unfreeze lr 0.001`` (``lr-decay 0.7`` added when set)."""
        lr = f"{self.lr:.3g}" if isinstance(self.lr, float) else str(self.lr)
        decay = f" lr-decay {self.lr_decay:g}" if self.lr_decay is not None else ""
        return f"{self.schedule} lr {lr}{decay}"

    def recipe(self, recipe: Any, **changes: Any) -> Any:
        """``recipe`` with this candidate's schedule, LR and decay, plus ``changes``."""
        return attrs.evolve(
            recipe,
            schedule=self.schedule,
            schedule_opts={},
            lr=self.lr,
            lr_decay=self.lr_decay,
            **changes,
        )

    def to_json(self) -> dict[str, Any]:
        """``{"schedule", "lr", "lr_decay"}``."""
        return attrs.asdict(self)


def searchable(
    plugins: PluginHost, names: Sequence[str] | None = None, per_class: float | None = None
) -> list[str]:
    """The schedules a search tries, in its order: ``names``, or every registered one that
    runs without options, :data:`PRIORITY` first (:data:`FEW_SHOT_PRIORITY` when the median
    class has ``per_class`` < :data:`FEW_SHOT` training images); a named one must run
    without options too."""
    registry = plugins.registry("schedules")
    if not names:
        first = (*search_order(per_class)[0], plugins.kinds["schedules"].default)
        found = [n for n in registry.names() if not _required(plugins, n)]
        return sorted(found, key=lambda name: first.index(name) if name in first else 99)
    for name in names:
        needs = _required(plugins, name)
        if needs:
            raise OptionError(
                f"schedule '{name}' needs option(s) {', '.join(needs)}; a search tries only "
                "schedules that run without options"
            )
    return list(dict.fromkeys(names))


def search_order(per_class: float | None) -> tuple[tuple[str, ...], str]:
    """The schedules a search puts first when the median class has ``per_class`` training
    images (:data:`FEW_SHOT_PRIORITY` under :data:`FEW_SHOT`, else :data:`PRIORITY`), and
    the order in words."""
    if per_class is not None and per_class < FEW_SHOT:
        return FEW_SHOT_PRIORITY, (
            f"with {per_class:g} training images a class, the schedules that change the "
            "pretrained weights least first"
        )
    return PRIORITY, "the strongest usual choices first"


def _required(plugins: PluginHost, name: str) -> list[str]:
    strategy = plugins.registry("schedules").get(name)
    return [key for key, option in strategy.options.items() if option.required]


def candidates(plugins: PluginHost, recipe: Any, schedules: Sequence[str]) -> list[Candidate]:
    """``schedules`` crossed with :data:`LR_FACTORS` times the recipe's LR, then (unless
    the recipe sets one) :data:`LR_DECAY` for those that train the backbone, in the order
    a short budget takes them: every schedule at the recipe's LR first."""
    lrs = [recipe.lr]  # a word (auto: found by a range test in each run): no grid
    if not isinstance(recipe.lr, str):
        lrs = [recipe.lr if f == 1 else float(f"{recipe.lr * f:.3g}") for f in LR_FACTORS]
    found = [Candidate(s, lr, recipe.lr_decay) for lr in lrs for s in schedules]
    if recipe.lr_decay is None:
        trains = [s for s in schedules if 1.0 in _epoch_costs(plugins, s, 10)]
        found += [Candidate(s, recipe.lr, LR_DECAY) for s in trains]
    return found


def cost(plugins: PluginHost, schedule: str, epochs: int, full_epochs: int) -> float:
    """Estimated cost of a candidate run of ``epochs`` epochs on the training images left
    after the hold-out, in runs of ``full_epochs`` epochs on all of them (an epoch that
    trains only the head costs little: its features are cached)."""
    return sum(_epoch_costs(plugins, schedule, epochs)) * _share() / full_epochs


def _epoch_costs(plugins: PluginHost, schedule: str, epochs: int) -> list[float]:
    """Each epoch's cost, in epochs that train the backbone, on a typical backbone."""
    try:
        stages, _ = make_plan(choose(plugins, "schedules", schedule, {}), list(GROUPS), epochs)
    except Exception:  # a schedule that needs other groups: count every epoch in full
        return [1.0] * epochs
    found = []
    for epoch in range(epochs):
        stage = [s for s in stages if s.start <= epoch][-1]
        head_only = set(stage.training) <= {GROUPS[-1]}
        found.append((HEAD_FIRST if epoch == stage.start else HEAD_MORE) if head_only else 1.0)
    return found


def _share() -> float:
    """An epoch on the search's split, in epochs on all the training images."""
    return 1 - HOLD_OUT + HOLD_OUT * EVAL_SHARE
