"""Every hook a tlplug plugin can implement, grouped by phase.

Registration hooks are called once per engine, the first time a strategy of that kind is
looked up. Each receives ``register(name, factory, description=None)``; calling it adds one
named strategy. None of them uses first-result: every plugin's implementation is called.

Lifecycle hooks are called by :meth:`tlplug.Engine.fit` while a run trains. They receive the
live :class:`tlplug.run.Run` and may read it or adjust what the docstring allows. Every
implementation is called; return values are ignored.

The hook API is versioned (:data:`HOOK_API`, MAJOR.MINOR): a minor version adds hooks or
arguments, a major version changes or removes them. A plugin states what it needs with a
``TLPLUG_HOOK_API = "1.0"`` attribute; a plugin that needs another major version, or a
newer minor one, is reported as incompatible and not loaded.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("tlplug")
hookimpl = pluggy.HookimplMarker("tlplug")

HOOK_API = "1.0"


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
    the LR. Keyword-only parameters are options (``--schedule-opt``). A factory whose
    ``adapter`` attribute names an adapter (``lora``) gets that adapter when ``--adapter``
    is not given. Every implementation is called.
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
    ``factory(img_size, **options)`` and expects a callable. Where it acts is
    the factory's ``phase`` attribute (set it with :func:`tlplug.augmentation`):

    - ``"pixels"`` (the default): takes and returns one ``uint8`` image tensor of shape
      ``(3, img_size, img_size)``, after the base resize and center crop; torchvision v2
      transforms qualify;
    - ``"tensor"``: takes and returns one normalized float image tensor;
    - ``"batch"``: takes and returns ``(images, targets)`` for a whole batch on the
      training device, ``targets`` being ``(batch, num_classes)`` probabilities (mixup,
      cutmix). With several, each batch uses one, chosen at random.

    Within a phase, augmentations run by the factory's ``order`` attribute (default 50;
    crops 10, flips 20, colour operations 30), then in the order given. Keyword-only
    parameters are options (``--augment-opt``). Every implementation is called.
    """


@hookspec
def tlplug_register_data_sources(register):
    """Register data sources (``--data NAME:LOCATION``).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(location, seed, val_split, **options)`` with the text after ``NAME:``, the
    run's seed and ``--val-split`` (None when not given), and expects a
    :class:`tlplug.Splits`. A ``--data`` value without a registered ``NAME:`` prefix is a
    path: a folder goes to the built-in ``folder`` source, a ``.csv`` file to ``csv``.
    Keyword-only parameters are options (``--data-opt``). Every implementation is called.
    """


@hookspec
def tlplug_register_adapters(register):
    """Register adapters (``--adapter``): small trainable modules added to the backbone.

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(model, **options)`` with the :class:`tlplug.TransferModel` after the head is
    on and before the optimizer is built; the factory changes ``model.backbone`` in place
    and returns a :class:`tlplug.Adapter` naming the parameters that never train and how to
    export weights without the adapter. New parameters join the layer group of the module
    they sit in, so freeze schedules and LR multipliers apply to them. Keyword-only
    parameters are options (``--adapter-opt``). Every implementation is called.
    """


@hookspec
def tlplug_register_regularizers(register):
    """Register training-loss regularizers (``--regularizer``, repeatable).

    Called once per engine. ``register(name, factory)``: the engine calls
    ``factory(model, **options)`` with the :class:`tlplug.TransferModel` once per run,
    before training, while it holds its starting (pretrained) weights, and expects a
    callable ``penalty(batch)`` returning a scalar tensor that is added to the loss of
    every training step; ``batch`` is a :class:`tlplug.Batch` (images, features, logits,
    targets). ``images`` is None while the head trains on cached features; a penalty that
    needs them sets ``needs_images = True`` and the feature cache stays off.
    Keyword-only parameters are options (``--regularizer-opt NAME.KEY=VALUE``). Every
    implementation is called.
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
