"""Built-in freeze schedules: which layer groups train in which epochs.

Each factory gets the group names ordered stem to head and the number of epochs, and
returns the plan as a list of :class:`tlplug.Stage`. "Top" means nearest the head.
"""

from __future__ import annotations

from tlplug import Stage, hookimpl
from tlplug.errors import OptionError
from tlplug.train.stages import top_groups


@hookimpl
def tlplug_register_schedules(register):
    register("full", full)
    register("linear-probe", linear_probe)
    register("freeze-unfreeze", freeze_unfreeze)
    register("gradual", gradual)
    register("milestones", milestones)
    register("lp-ft", lp_ft)
    register("bitfit", bitfit)


def full(groups: list[str], epochs: int) -> list[Stage]:
    """Train every group from the first epoch."""
    return [Stage(0, groups)]


def linear_probe(groups: list[str], epochs: int) -> list[Stage]:
    """Train only the head; the backbone stays frozen."""
    return [Stage(0, top_groups(groups, 1))]


def freeze_unfreeze(groups: list[str], epochs: int, *, frozen_epochs: int = 1) -> list[Stage]:
    """Train the head for ``frozen_epochs``, then everything (fastai's fine_tune)."""
    if frozen_epochs < 0:
        raise OptionError("freeze-unfreeze option frozen_epochs must be >= 0")
    if frozen_epochs == 0:
        return [Stage(0, groups)]
    return [Stage(0, top_groups(groups, 1)), Stage(frozen_epochs, groups)]


def gradual(
    groups: list[str], epochs: int, *, epochs_per_stage: int = 1, groups_per_stage: int = 1
) -> list[Stage]:
    """Start with the head, unfreeze ``groups_per_stage`` more groups every ``epochs_per_stage``."""
    if epochs_per_stage < 1 or groups_per_stage < 1:
        raise OptionError("gradual options epochs_per_stage and groups_per_stage must be >= 1")
    plan = [Stage(0, top_groups(groups, 1))]
    count = 1
    while count < len(groups):
        count += groups_per_stage
        plan.append(Stage(len(plan) * epochs_per_stage, top_groups(groups, count)))
    return plan


def milestones(
    groups: list[str], epochs: int, *, at: tuple[int, ...], groups_per_stage: int = 1
) -> list[Stage]:
    """Start with the head; at each epoch in ``at`` unfreeze ``groups_per_stage`` more groups."""
    if list(at) != sorted(set(at)) or (at and at[0] < 1):
        raise OptionError("milestones option at must list increasing epochs >= 1, e.g. at=5,10")
    plan = [Stage(0, top_groups(groups, 1))]
    for index, epoch in enumerate(at, start=1):
        plan.append(Stage(epoch, top_groups(groups, 1 + index * groups_per_stage)))
    return plan


def lp_ft(
    groups: list[str],
    epochs: int,
    *,
    probe_epochs: int | None = None,
    ft_lr_scale: float = 1.0,
    warmup: float = 0.0,
) -> list[Stage]:
    """Linear probe, then fine-tune everything at ``ft_lr_scale`` times the LR (LP-FT).

    Kumar et al. 2022: a head fitted first keeps fine-tuning from distorting the
    pretrained features. The probe is the one ``linear-probe`` fits; ``probe_epochs``
    defaults to half the run, so fine-tuning runs on the LR schedule's second half, at
    half the LR and less. The backbone's groups warm up over the fine-tuning stage's first
    ``warmup`` epochs. docs/getting-started.md has the measurements behind the defaults.
    """
    probe = max(1, epochs // 2) if probe_epochs is None else probe_epochs
    if probe < 1:
        raise OptionError("lp-ft option probe_epochs must be >= 1")
    if not ft_lr_scale > 0:
        raise OptionError("lp-ft option ft_lr_scale must be > 0")
    if not warmup >= 0:
        raise OptionError("lp-ft option warmup must be >= 0")
    return [
        Stage(0, top_groups(groups, 1), "probe"),
        Stage(probe, groups, "fine-tune", lr_scale=ft_lr_scale, warmup=warmup),
    ]


def bitfit(groups: list[str], epochs: int, *, probe_epochs: int = 1) -> list[Stage]:
    """Fit the head alone for ``probe_epochs``, then train it with the bias parameters of
    every backbone group (Ben Zaken et al. 2022).

    The probe first, as in LP-FT: biases trained beside a random head follow its noise,
    and a few epochs of a small data set leave that head untrained (chance on 60 images).
    """
    if probe_epochs < 0:
        raise OptionError("bitfit option probe_epochs must be >= 0")
    head = top_groups(groups, 1)
    start = min(probe_epochs, max(0, epochs - 1))  # a one-epoch run trains the biases
    tune = Stage(start, head, biases=groups[:-1])
    return [Stage(0, head), tune] if start > 0 else [tune]
