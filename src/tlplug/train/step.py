"""One training epoch and one evaluation pass."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlplug.compute.distributed import SOLO, World
from tlplug.compute.precision import FP32, Numerics
from tlplug.console import Console
from tlplug.data.loaders import shard_of
from tlplug.errors import TlplugError
from tlplug.run import Step
from tlplug.train.loss import Batch, TrainingLoss

_OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)


class Diverged(TlplugError):
    """The loss stopped being finite."""


class OutOfMemory(TlplugError):
    """A training step ran out of memory."""


@attrs.frozen
class EpochStats:
    """Mean loss, accuracy, images seen and wall time of one pass over a loader; ``complete``
    is False when a stop request ended the pass early. ``labels_loss``: the labels'
    cross-entropy alone, when a teacher's part of the loss makes it differ (distillation)."""

    loss: float
    acc: float
    images: int
    seconds: float
    complete: bool = True
    norm_images: int = 0  # images the norm layers' statistics were recomputed from after it
    labels_loss: float | None = None  # the labels' cross-entropy, when a teacher's part adds


class StepForward(nn.Module):
    """What a training step runs: ``model``'s backbone (unless the batches are ``cached``
    features) and head, returning ``(features, logits)``. One module, so a data-parallel
    wrapper (:func:`tlplug.compute.distributed.wrap_step`) sees the whole step."""

    def __init__(self, model: nn.Module, cached: bool = False):
        super().__init__()
        self.model, self.cached = model, cached

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = images if self.cached else self.model.backbone(images)
        return features, self.model.head(features)


@attrs.define
class NonFinite:
    """How many batches with a non-finite loss a run may skip, and how many it has."""

    allowed: int = 0
    skipped: int = 0


@attrs.frozen
class StepInputs:
    """What every training step of a stage uses, made once per stage
    (:meth:`tlplug.train.feed.Feed.step_inputs`) and shared by the epoch and the LR range
    test: the module a step calls (``model``: a ``backbone`` and a ``head``; with
    ``cached`` the batches are backbone features and only the head runs; with ``replay``
    they are a frozen prefix's outputs and ``model`` is a
    :class:`~tlplug.train.prefix_cache.Replay`), that step as the processes run it
    (``forward``, :class:`StepForward` wrapped for data parallelism over the parameters
    the stage trains), the device and precision, the loss, the batch-level augmentation
    (mixup, cutmix), the batches an optimizer step adds up and the processes (``world``).
    """

    model: nn.Module
    forward: nn.Module
    device: torch.device
    loss: TrainingLoss
    numerics: Numerics = FP32
    batch_augment: Callable | None = None
    cached: bool = False
    replay: bool = False
    accumulate: int = 1
    world: World = SOLO


def train_epoch(
    inputs: StepInputs,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler,
    console: Console,
    epoch: int,
    *,
    stop=None,
    nonfinite: NonFinite | None = None,
    on_step: Callable[[Step], None] | None = None,
    first_step: int = 1,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """Train for one pass over ``loader`` with the stage's ``inputs``, stepping the
    optimizer and the LR schedule after every ``inputs.accumulate`` batches (and after the
    last).

    A batch whose loss is NaN or infinite adds no gradient; it is skipped while
    ``nonfinite`` allows, else the run stops with :class:`Diverged`; with several
    processes they agree on skipping and on stopping, and the returned loss and accuracy
    are over every process's images. ``stop`` (a
    :class:`~tlplug.train.interrupt.StopRequest`) ends the pass after the batch in
    progress. ``on_step`` gets a :class:`~tlplug.run.Step` after every batch;
    ``first_step`` numbers the first one in the run. ``after_step`` runs after every
    optimizer step (the weight average's update).
    """
    forward, device, numerics, loss = inputs.forward, inputs.device, inputs.numerics, inputs.loss
    world, accumulate, cached = inputs.world, inputs.accumulate, inputs.cached
    batch_augment = inputs.batch_augment
    nonfinite = nonfinite if nonfinite is not None else NonFinite()
    scaler = torch.amp.GradScaler(device.type, enabled=numerics.dtype == torch.float16)
    total_loss, total_labels, correct, seen, pending = 0.0, 0.0, 0, 0, 0
    taught_any = False
    start = time.perf_counter()
    batches = console.progress(loader, len(loader), f"epoch {epoch} train")
    for step, (images, labels, *taught) in enumerate(batches, start=1):
        images = numerics.inputs(images, device)
        labels = labels.to(device, non_blocking=True)
        targets = loss.targets(labels)
        if batch_augment is not None and not cached:
            images, targets = batch_augment(images, targets)
        try:
            # a cache's batches bring the teacher's logits; live images meet the teacher here
            if taught:
                teacher_logits = taught[0].to(device, non_blocking=True)
            else:
                teacher_logits = None if cached or inputs.replay else loss.taught(images)
            with numerics.autocast(device):
                features, logits = forward(images)
            shown = None if cached or inputs.replay else images
            value_t, labels_t = loss.with_labels_part(
                Batch(shown, features, logits, targets, teacher_logits)
            )
            value = value_t.item()
            taught_any = taught_any or teacher_logits is not None
            finite = math.isfinite(value)
            if world.parallel:  # every process skips the batch or none, and all stop together
                stopping = bool(stop is not None and stop.requested)
                finite_in, stopping_in = world.sum([finite, stopping])
                finite = finite_in == world.size
                if stopping_in and stop is not None and not stop.requested:
                    stop.requested = "another process's stop request"
            if finite:
                scaler.scale(value_t / accumulate if accumulate > 1 else value_t).backward()
                pending += 1
            if step % accumulate == 0 or step == len(loader):
                if pending:
                    scaler.step(optimizer)
                    scaler.update()
                    if after_step is not None:
                        after_step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                pending = 0
        except (*_OOM_ERRORS, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            raise OutOfMemory(_oom_message(len(labels), epoch, step)) from None
        if not finite:
            _skip_or_stop(value, epoch, step, nonfinite)
        else:
            total_loss += value * len(labels)
            if teacher_logits is not None:
                total_labels += labels_t.item() * len(labels)
            correct += (logits.argmax(1) == targets.argmax(1)).sum().item()
            seen += len(labels)
        if on_step is not None:
            on_step(Step(epoch, step, first_step + step - 1, len(labels), value, not finite))
        if stop is not None and stop.requested:
            break
    total_loss, total_labels, correct, seen = world.sum([total_loss, total_labels, correct, seen])
    seen = int(seen)
    return EpochStats(
        total_loss / max(1, seen),
        correct / max(1, seen),
        seen,
        time.perf_counter() - start,
        complete=stop is None or not stop.requested,
        labels_loss=total_labels / max(1, seen) if taught_any else None,
    )


def fit_batch_size(
    model: nn.Module,
    batch_size: int,
    img_size: int,
    num_classes: int,
    device: torch.device,
    numerics: Numerics = FP32,
) -> int:
    """The largest batch size, halving from ``batch_size``, at which a training step of the
    whole model fits in memory. The model's weights and statistics are left as they were."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    size = batch_size
    try:
        while True:
            try:
                model.train()
                for param in model.parameters():
                    param.requires_grad_(True)
                images = numerics.inputs(torch.randn(size, 3, img_size, img_size), device)
                labels = torch.arange(size, device=device) % num_classes
                with numerics.autocast(device):
                    logits = model(images)
                nn.functional.cross_entropy(logits.float(), labels).backward()
                return size
            except (*_OOM_ERRORS, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and not _is_oom(exc):
                    raise
                if size == 1:
                    raise OutOfMemory(
                        "out of memory even at batch size 1; try a smaller --img-size or "
                        "a smaller --backbone"
                    ) from None
                size //= 2
            finally:
                model.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    finally:
        model.load_state_dict(saved)
        for param, flag in zip(model.parameters(), flags, strict=True):
            param.requires_grad_(flag)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, _OOM_ERRORS) or (
        "out of memory" in str(exc) or "can't allocate memory" in str(exc)
    )


def _skip_or_stop(value: float, epoch: int, step: int, nonfinite: NonFinite) -> None:
    if nonfinite.skipped < nonfinite.allowed:
        nonfinite.skipped += 1
        return
    hint = " or --skip-nonfinite N to step over a few bad batches" if not nonfinite.allowed else ""
    raise Diverged(f"the loss became {value} at epoch {epoch}, step {step}; try a lower --lr{hint}")


def _oom_message(batch_size: int, epoch: int, step: int) -> str:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return (
        f"out of memory in a training step at batch size {batch_size} (epoch {epoch}, step "
        f"{step}); try --batch-size {max(1, batch_size // 2)}, a smaller --img-size, "
        "or --auto-batch-size to find the largest batch that fits"
    )


@attrs.frozen
class Evaluation:
    """Loss and accuracy of an evaluation pass, and its confusion matrix: ``confusion[i, j]``
    counts the images of class ``i`` predicted as ``j``."""

    stats: EpochStats
    confusion: torch.Tensor

    @property
    def correct(self) -> list[int]:
        """Correct predictions per class."""
        return self.confusion.diagonal().tolist()

    @property
    def count(self) -> list[int]:
        """Images per class."""
        return self.confusion.sum(1).tolist()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    numerics: Numerics = FP32,
    progress: Callable | None = None,
    world: World = SOLO,
) -> Evaluation:
    """Loss, accuracy and confusion matrix on ``loader``, in eval mode; ``progress`` wraps
    the batches (a progress bar: ``progress(batches, total)``). With several processes
    (``world``), each evaluates its part of the images and the counts are added up: every
    image counts once."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    total_loss, seen = 0.0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)
    start = time.perf_counter()
    loader, shared = _part(loader, world)
    batches = progress(loader, len(loader)) if progress else loader
    for images, labels in batches:
        images = numerics.inputs(images, device)
        labels = labels.to(device, non_blocking=True)
        with numerics.autocast(device):
            logits = model(images).float()
        total_loss += loss_fn(logits, labels).item()
        pairs = (labels * num_classes + logits.argmax(1)).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes * num_classes)
        seen += len(labels)
    if shared:
        *counts, total_loss, seen = world.sum([*confusion.tolist(), total_loss, seen])
        confusion, seen = torch.tensor(counts).round().long(), round(seen)
    confusion = confusion.view(num_classes, num_classes)
    correct = int(confusion.diagonal().sum())
    stats = EpochStats(
        total_loss / max(1, seen), correct / max(1, seen), seen, time.perf_counter() - start
    )
    return Evaluation(stats, confusion)


def _part(batches: Any, world: World) -> tuple[Any, bool]:
    """This process's part of an evaluation pass over ``batches`` (a loader's contiguous
    part, or every ``world.size``-th batch of an iterable: cached features), and whether
    the processes share the pass; a loader of fewer images than processes is not shared."""
    if not world.parallel:
        return batches, False
    if isinstance(batches, DataLoader):
        if len(batches.dataset) < world.size:
            return batches, False
        return shard_of(batches, world)[0], True
    return _EveryNth(batches, world.rank, world.size), True


class _EveryNth:
    """Batches ``rank``, ``rank + size``, ... of ``batches``, as a sized iterable."""

    def __init__(self, batches: Any, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batches), self.size))

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            if index % self.size == self.rank:
                yield batch
