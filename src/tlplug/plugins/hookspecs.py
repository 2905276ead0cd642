"""Every hook a tlplug plugin can implement, grouped by phase.

**Set-up** hooks extend tlplug itself: a kind of strategy of a plugin's own, commands.
**Registration** hooks fill the registry of one kind each (:mod:`tlplug.plugins.kinds`): they are
called together, once per plugin manager, the first time any name is looked up, each with
``register(name, factory, description=None)``. A plugin that raises in any of them is
disabled whole: none of its names or hooks stay live. **Lifecycle** hooks are called while a
run trains, with the live :class:`tlplug.run.Run`. Every implementation of every hook is
called; none uses first-result.

The hook API is versioned (:data:`HOOK_API`, MAJOR.MINOR): a minor version adds hooks or
arguments, a major version changes or removes them. A plugin states what it needs with a
``TLPLUG_HOOK_API = "1.4"`` attribute; a plugin that needs another major version, or a
newer minor one, is reported as incompatible and not loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from tlplug.run import Run, Step
    from tlplug.train.stages import Stage

hookspec = pluggy.HookspecMarker("tlplug")
hookimpl = pluggy.HookimplMarker("tlplug")

HOOK_API = "1.4"

#: ``register(name, factory, description=None)``: what every registration hook receives.
Register = Callable[..., Any]


# --- set-up -----------------------------------------------------------------------------


@hookspec
def tlplug_add_kinds(add: Callable[..., None]) -> None:
    """Add kinds of strategy of the plugin's own.

    Called once per plugin manager, after every plugin is loaded and before any name is
    looked up. ``add(kind, specs)`` takes a :class:`tlplug.Kind` row and the object
    (module or class) holding its registration hook's spec, marked with
    :data:`tlplug.hookspec`. The kind then gets recipe fields, ``tlplug run`` options,
    name resolution and a record in config.json like a built-in kind; the plugin that
    consumes the chosen strategies reads them from ``run.parts[kind.key]``. Return value
    ignored.
    """


@hookspec
def tlplug_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tlplug`` command line.

    Called once when the command line is built, with the ``tlplug`` click group; add a
    command with ``@cli.command()``. A command whose name another command has is refused
    and the plugin reported as failed. Return value ignored.
    """


# --- registration -----------------------------------------------------------------------


@hookspec
def tlplug_register_backbones(register: Register) -> None:
    """Register backbone providers, the part before ':' in ``--backbone timm:resnet50``.

    ``register(name, provider)`` takes a provider object with
    ``list_models(pattern=None) -> list[str]``, ``describe(model) -> str`` and
    ``create(model, pretrained, img_size, **options) -> tlplug.Backbone``. The keyword-only
    parameters of ``create`` are the provider's options (``--backbone-opt``).
    """


@hookspec
def tlplug_register_heads(register: Register) -> None:
    """Register classification heads (``--head``).

    ``register(name, factory)``: the engine calls ``factory(num_features, num_classes,
    **options)`` and expects an ``nn.Module`` mapping ``(batch, num_features)`` to
    ``(batch, num_classes)`` logits. Keyword-only parameters of the factory are its
    options (``--head-opt``).
    """


@hookspec
def tlplug_register_schedules(register: Register) -> None:
    """Register freeze schedules (``--schedule``).

    ``register(name, factory)``: the engine calls ``factory(groups, epochs, **options)``
    with the layer-group names ordered stem to head and the number of epochs, and expects a
    list of :class:`tlplug.Stage`, the first starting at epoch 0; a stage may also train
    only the biases of some groups and scale the LR. Keyword-only parameters are options
    (``--schedule-opt``). A factory whose ``adapter`` attribute names an adapter (``lora``)
    gets that adapter when ``--adapter`` is not given.
    """


@hookspec
def tlplug_register_lr_schedules(register: Register) -> None:
    """Register learning-rate schedules (``--lr-schedule``).

    ``register(name, factory)``: the engine calls ``factory(optimizer, total_steps,
    steps_per_epoch, **options)`` once per run and expects a
    ``torch.optim.lr_scheduler.LRScheduler`` that it steps after every optimizer step, or a
    ``ReduceLROnPlateau`` that it steps after every epoch with the validation loss. The
    optimizer already holds every parameter group, frozen ones included, so the scheduler
    never sees a group appear; each group's ``lr`` already carries its multiplier.
    Keyword-only parameters are options.
    """


@hookspec
def tlplug_register_augmentations(register: Register) -> None:
    """Register training augmentations (``--augment``, repeatable).

    ``register(name, factory)``: the engine calls ``factory(img_size, **options)`` and
    expects a callable. How it takes part is set with :func:`tlplug.augmentation` on the
    factory: its ``phase``

    - ``"pixels"`` (the default): takes and returns one ``uint8`` image tensor of shape
      ``(3, img_size, img_size)``, after the base resize and center crop; torchvision v2
      transforms qualify;
    - ``"tensor"``: takes and returns one normalized float image tensor;
    - ``"batch"``: takes and returns ``(images, targets)`` for a whole batch on the
      training device, ``targets`` being ``(batch, num_classes)`` probabilities (mixup,
      cutmix). With several, each batch uses one, chosen at random, then every one marked
      ``always``;

    its ``order`` within the phase (default 50; crops 10, flips 20, colour operations 30),
    and ``random=False`` for a deterministic transform, which a feature cache applies too.
    Keyword-only parameters are options (``--augment-opt``).
    """


@hookspec
def tlplug_register_data_sources(register: Register) -> None:
    """Register data sources (``--data NAME:LOCATION``).

    ``register(name, factory)``: the engine calls ``factory(location, seed, val_split,
    **options)`` with the text after ``NAME:``, the run's seed and ``--val-split`` (None
    when not given), and expects a :class:`tlplug.Splits`. A ``--data`` value without a
    registered ``NAME:`` prefix is a path: a folder goes to the built-in ``folder`` source,
    a ``.csv`` file to ``csv``. Keyword-only parameters are options (``--data-opt``).
    """


@hookspec
def tlplug_register_adapters(register: Register) -> None:
    """Register adapters (``--adapter``): small trainable modules added to the backbone.

    ``register(name, factory)``: the engine calls ``factory(model, **options)`` with the
    :class:`tlplug.TransferModel` after the head is on and before the optimizer is built;
    the factory changes ``model.backbone`` in place and returns a :class:`tlplug.Adapter`
    naming the parameters that never train and how to export weights without the adapter.
    New parameters join the layer group of the module they sit in, so freeze schedules and
    LR multipliers apply to them. Keyword-only parameters are options (``--adapter-opt``).
    """


@hookspec
def tlplug_register_regularizers(register: Register) -> None:
    """Register training-loss regularizers (``--regularizer``, repeatable).

    ``register(name, factory)``: the engine calls ``factory(model, **options)`` with the
    :class:`tlplug.TransferModel` once per run, before training, while it holds its
    starting (pretrained) weights, and expects a callable ``penalty(batch)`` returning a
    scalar tensor that is added to the loss of every training step; ``batch`` is a
    :class:`tlplug.Batch` (images, features, logits, targets). ``images`` is None while the
    head trains on cached features; a penalty that needs them sets ``needs_images = True``
    and the feature cache stays off. Keyword-only parameters are options
    (``--regularizer-opt NAME.KEY=VALUE``).
    """


@hookspec
def tlplug_register_distillation_losses(register: Register) -> None:
    """Register distillation losses (``--distill-loss``): how a student learns from the
    outputs of a finished run's model (``--teacher RUN``); ``kd`` is built in.

    ``register(name, factory)``: when a run has a teacher, the engine calls
    ``factory(**options)`` once before training and expects a callable
    ``loss(logits, teacher_logits, hard_loss)`` returning the scalar training loss of a
    batch: ``logits`` are the student's, ``teacher_logits`` the teacher's on the same
    (augmented) images, both ``(batch, num_classes)`` in float32, and ``hard_loss`` the
    cross-entropy on the labels (with smoothing and class weights). Regularizers' penalties
    are added to what it returns. Keyword-only parameters are options
    (``--distill-loss-opt KEY=VALUE``).
    """


@hookspec
def tlplug_register_loggers(register: Register) -> None:
    """Register loggers (``--logger``, repeatable): where a run's numbers go besides
    metrics.jsonl (``csv`` is built in).

    ``register(name, factory)``: at the start of every run, tlplug calls
    ``factory(**options)`` and expects an object with any of the methods ``run_start(run)``,
    ``step_end(run, step)``, ``epoch_end(run, record)``, ``run_end(run, summary)`` and
    ``run_error(run, reason, error)``, called as the lifecycle hooks of the same names
    are; a logger without ``step_end`` costs nothing per step. Keyword-only parameters are
    options (``--logger-opt NAME.KEY=VALUE``).
    """


@hookspec
def tlplug_register_exporters(register: Register) -> None:
    """Register export formats (``tlplug export RUN --format NAME``).

    ``register(name, factory)``: the command calls ``factory(classifier, out, **options)``
    with the run's :class:`tlplug.Classifier` (in eval mode, on the CPU) and the path to
    write, and expects a function that runs the written file on a float image batch and
    returns its logits; the command compares them with the PyTorch model's on sample
    inputs and prints the largest difference. The factory's ``suffix`` attribute
    (``".onnx"``) names the file's usual ending. Keyword-only parameters are options
    (``--format-opt``).
    """


# --- lifecycle --------------------------------------------------------------------------


@hookspec
def tlplug_run_start(run: Run) -> None:
    """Called once when a run has built its model, optimizer and data, before training.

    ``run.config`` is what config.json holds, made from the recipe and ``run.resolved``;
    it may still be extended with JSON-serialisable entries (a fresh run writes it after
    this hook; the engine never reads it back while the run trains). A resumed run calls
    it again after restoring its state: ``run.epoch`` is then the last finished epoch
    (0 for a fresh run). Return value ignored.
    """


@hookspec
def tlplug_stage_start(run: Run, stage: Stage) -> None:
    """Called when a freeze stage begins, after it is applied, and for the stage a resumed
    run continues in.

    ``stage`` is the :class:`tlplug.Stage` now in force; ``run.model`` has exactly the
    stage's groups trainable, ``run.epoch`` is the epoch about to train (after
    ``stage.start + 1`` when a resumed run continues the stage), and ``run.source`` says
    where the stage's steps get their inputs. Return value ignored.
    """


@hookspec
def tlplug_step_end(run: Run, step: Step) -> None:
    """Called after every training step, for loggers.

    ``step`` is a :class:`tlplug.run.Step` (epoch, step number, loss, images). Costs
    nothing while no plugin implements it. Return value ignored.
    """


@hookspec
def tlplug_epoch_end(run: Run, record: dict[str, Any]) -> None:
    """Called after each epoch's validation, before the epoch's checkpoints are written.

    ``record`` is the dict that becomes one line of metrics.jsonl; a plugin may add
    JSON-serialisable keys to it (the built-in metrics.jsonl writer runs last). Return
    value ignored.
    """


@hookspec
def tlplug_run_end(run: Run, summary: dict[str, Any]) -> None:
    """Called once after the last epoch, before summary.json is written.

    ``summary`` is the dict that becomes summary.json; a plugin may add keys to it.
    Return value ignored.
    """


@hookspec
def tlplug_run_error(run: Run, reason: str, error: BaseException) -> None:
    """Called once when a run ends in an error, after what it kept is on disk.

    ``reason`` is ``"interrupted"`` (a signal), ``"diverged"`` (a non-finite loss),
    ``"out-of-memory"`` or ``"error"``; ``error`` is the exception, which propagates after
    the hook. Return value ignored.
    """
