"""Every hook a tlplug plugin can implement, grouped by phase.

Registration hooks are called once per engine, the first time a strategy of that kind is
looked up. Each receives ``register(name, factory, description=None)``; calling it adds one
named strategy. None of them uses first-result: every plugin's implementation is called.

Lifecycle hooks are called by :meth:`tlplug.Engine.fit` while a run trains. They receive the
live :class:`tlplug.run.Run` and may read it or adjust what the docstring allows. Every
implementation is called; return values are ignored.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("tlplug")
hookimpl = pluggy.HookimplMarker("tlplug")


# --- registration -----------------------------------------------------------------------


@hookspec
def tlplug_register_backbones(register):
    """Register backbone providers, the part before ':' in ``--backbone timm:resnet50``.

    Called once per engine. ``register(name, provider)`` takes a provider object with
    ``list_models(pattern=None) -> list[str]``, ``describe(model) -> str`` and
    ``create(model, pretrained, img_size, **options) -> tlplug.Backbone``. The keyword-only
    parameters of ``create`` are the provider's options (``--backbone-opt``). Every
    implementation is called.
    """


@hookspec
def tlplug_register_heads(register):
    """Register classification heads (``--head``).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(num_features, num_classes, **options)`` and expects an ``nn.Module`` mapping
    ``(batch, num_features)`` to ``(batch, num_classes)`` logits. Keyword-only parameters
    of the factory are its options (``--head-opt``). Every implementation is called.
    """


@hookspec
def tlplug_register_schedules(register):
    """Register freeze schedules (``--schedule``).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(groups, epochs, **options)`` with the layer-group names ordered stem to head
    and the number of epochs, and expects a list of :class:`tlplug.Stage`, the first
    starting at epoch 0; a stage may also train only the biases of some groups and scale
    the LR. Keyword-only parameters are options (``--schedule-opt``). Every
    implementation is called.
    """


@hookspec
def tlplug_register_lr_schedules(register):
    """Register learning-rate schedules (``--lr-schedule``).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(optimizer, total_steps, steps_per_epoch, **options)`` once per run and expects
    a ``torch.optim.lr_scheduler.LRScheduler`` that it steps after every optimizer step,
    or a ``ReduceLROnPlateau`` that it steps after every epoch with the validation loss.
    The optimizer already holds every parameter group, frozen ones included, so the
    scheduler never sees a group appear; each group's ``lr`` already carries its
    multiplier. Keyword-only parameters are options. Every implementation is called.
    """


@hookspec
def tlplug_register_augmentations(register):
    """Register training augmentations (``--augment``, repeatable).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(img_size, **options)`` and expects a callable that takes and returns a
    ``uint8`` image tensor of shape ``(3, img_size, img_size)``; torchvision v2 transforms
    qualify. Augmentations run in the order given, after the base resize and center crop
    and before normalization. Keyword-only parameters are options (``--augment-opt``).
    Every implementation is called.
    """


# --- lifecycle --------------------------------------------------------------------------


@hookspec
def tlplug_run_start(run):
    """Called once when a run has built its model, optimizer and data, before epoch 1.

    ``run`` is the live :class:`tlplug.run.Run`; ``run.config`` is what config.json will
    hold and may still be extended with JSON-serialisable entries. A resumed run calls it
    again after restoring its state: ``run.epoch`` is then the last finished epoch and
    ``run.config`` the run's existing config. Every implementation is called; return
    values are ignored.
    """


@hookspec
def tlplug_stage_start(run, stage):
    """Called when a freeze stage begins, after the engine has applied it.

    ``stage`` is the :class:`tlplug.Stage` now in force; ``run.model`` has exactly the
    stage's groups trainable. Every implementation is called; return values are ignored.
    """


@hookspec
def tlplug_epoch_end(run, record):
    """Called after each epoch's validation, before the record is written.

    ``record`` is the dict that becomes one line of metrics.jsonl; a plugin may add
    JSON-serialisable keys to it. Every implementation is called; return values are ignored.
    """


@hookspec
def tlplug_run_end(run, summary):
    """Called once after the last epoch, before summary.json is written.

    ``summary`` is the dict that becomes summary.json; a plugin may add keys to it. Every
    implementation is called; return values are ignored.
    """
