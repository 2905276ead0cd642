"""What a stage's training steps are fed: images, or inputs computed once for the stage.

While a stage trains only the head, the backbone is a fixed function (its groups run in
eval mode), so its features are computed once and the head trains on them (the feature
cache). While a stage trains the top of the backbone, the frozen layers below run once and
every step runs only the layers above them (the frozen-prefix replay). Either needs images
that do not change from epoch to epoch, BatchNorm statistics that do not follow the data
and no regularizer that needs the images. :func:`choose_source` decides and says why, as
data; :func:`feeding` provides what the stage's epochs iterate and call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import torch

from tlplug.feature_cache import extract
from tlplug.model import HEAD_GROUP
from tlplug.prefix_cache import PrefixCut, Replay, find_cut, prefix_output
from tlplug.run import Run, Source
from tlplug.schedule import Stage


@attrs.define
class Feed:
    """What a stage's epochs iterate and call.

    ``net`` evaluates a batch of ``val``; ``stepped`` is what a training step calls (it has
    a ``backbone`` and a ``head``); with ``cached`` the batches are features and only the
    head runs; with ``replay`` they are the frozen prefix's outputs. Until the stage's
    first epoch reports them, ``filled`` is the (seconds, images) of the cache fill and
    ``starting`` what the record of a stage's first epoch adds.
    """

    net: Any
    stepped: Any
    train: Iterable
    val: Iterable
    batch_augment: Callable | None = None
    cached: bool = False
    replay: bool = False
    filled: tuple[float, int] | None = None
    starting: dict[str, Any] = attrs.field(factory=dict)


def choose_source(run: Run, stage: Stage) -> tuple[Source, PrefixCut | None]:
    """Where ``stage`` gets its inputs, and the frozen-prefix cut when it replays one."""
    recipe, model = run.recipe, run.model
    if stage.biases or not stage.trainable or stage.trainable[0] == model.groups[0].name:
        return Source(), None
    cache = "features" if stage.trainable == (HEAD_GROUP,) else "prefix"
    needing = tuple(
        choice.strategy.name
        for choice, penalty in zip(run.parts["regularizers"], run.loss.penalties, strict=True)
        if getattr(penalty, "needs_images", False)
    )
    varying = run.pipeline.varying
    for reason, applies, names in (
        ("off", recipe.cache_features == "off", ()),
        ("bn-train", recipe.bn_policy == "train", ()),
        ("regularizer", bool(needing), needing),
        ("augmentation", bool(varying) and recipe.cache_features == "auto", varying),
    ):
        if applies:
            return Source(cache, False, reason, names), None
    if cache == "features":
        return Source(cache, True, names=varying), None
    size = run.config["resolved"]["img_size"]
    cut = find_cut(model, stage, size, run.device, run.numerics)
    if cut is None:
        return Source(cache, False, "no-cut"), None
    return Source(cache, True, names=varying, cut=cut.name), cut


@contextlib.contextmanager
def feeding(run: Run, source: Source, cut: PrefixCut | None) -> Iterator[Feed]:
    """Provide a stage's :class:`Feed`, filling its cache first when ``source`` uses one;
    the cache is released and the prefix's stubs removed when the block ends."""
    loaders = run.loaders
    if not source.used:
        stepped = run.compiled or run.model
        yield Feed(run.model, stepped, loaders.train, loaders.val, run.batch_augment)
        return
    started = time.perf_counter()
    forward = (lambda images: prefix_output(run.model, cut, images)) if cut else None
    cache = []
    try:
        for name, loader in (("train", loaders.plain), ("val", loaders.val)):
            spill = run.run_dir / ".{}.features"
            cache.append(
                extract(run.model.backbone, loader, run.device, spill, run.numerics, name, forward)
            )
        filled = (time.perf_counter() - started, sum(len(f.labels) for f in cache))
        train = cache[0].batches(loaders.train.batch_sampler)
        val = cache[1].batches(loaders.val.batch_sampler)
        if cut is None:
            yield Feed(run.model.head, run.model, train, val, cached=True, filled=filled)
            return
        replay = Replay(run.model, cut, torch.zeros(1, 3, 1, 1, device=run.device))
        with cut.replaying():
            yield Feed(replay, replay, train, val, replay=True, filled=filled)
    finally:
        for features in cache:
            features.release()
