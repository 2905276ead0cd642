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
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import torch

from tlplug.data.loaders import OutcomeLoader, ViewSampler, outcome_loader, view_loader
from tlplug.feature_cache import Features, extract
from tlplug.model import HEAD_GROUP
from tlplug.prefix_cache import PrefixCut, Replay, find_cut, prefix_output
from tlplug.probe import fits, linear_layer
from tlplug.run import Run, Source
from tlplug.schedule import Stage

DEFAULT_VIEWS = 4  # augmented views cached at most, unless --cache-views says otherwise


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
    features: Features | None = None  # set when the stage's linear head is fit to convergence
    converged: tuple[float, float] | None = None  # the fit's (loss, accuracy), once fit


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
    batch = run.pipeline.names["batch"]
    drawn = tuple(n for n in run.pipeline.varying if n not in batch)  # random image augs
    # Head-only stages cache augmented views of the images; a prefix replay caches the
    # images only as they are (its outputs are far larger than features).
    needs_images = batch if cache == "features" else run.pipeline.varying
    for reason, applies, names in (
        ("off", recipe.cache_features == "off", ()),
        ("bn-train", recipe.bn_policy == "train", ()),
        ("regularizer", bool(needing), needing),
        ("augmentation", bool(needs_images) and recipe.cache_features == "auto", needs_images),
    ):
        if applies:
            return Source(cache, False, reason, names), None
    if cache == "features":
        # A head fit by L-BFGS sees every view at once, so it gets the most views whatever
        # the stage's length, or every outcome of the augmentations when they are fewer
        # (a flip: two); a head trained by epochs sees one view per epoch.
        most = recipe.cache_views or DEFAULT_VIEWS
        outcomes = run.pipeline.outcomes
        if drawn and _converges(run) and outcomes is not None and len(outcomes) <= most:
            exact = Source(cache, True, names=batch, views=len(outcomes), drawn=drawn, exact=True)
            return exact, None
        views = (most if _converges(run) else min(_epochs_left(run, stage), most)) if drawn else 0
        return Source(cache, True, names=batch, views=views, drawn=drawn), None
    size = run.config["resolved"]["img_size"]
    cut = find_cut(model, stage, size, run.device, run.numerics)
    if cut is None:
        return Source(cache, False, "no-cut"), None
    return Source(cache, True, names=run.pipeline.varying, cut=cut.name), cut


def _converges(run: Run) -> bool:
    """True when a head-only stage of ``run`` is fit to convergence rather than by epochs
    (if its features fit in memory)."""
    return (
        run.recipe.probe == "converge"
        and linear_layer(run.model.head) is not None
        and not run.loss.penalties
    )


def _epochs_left(run: Run, stage: Stage) -> int:
    """The epochs of ``stage`` from the current one on."""
    later = [s.start for s in run.plan if s.start > stage.start]
    return (min(later) if later else run.recipe.epochs) - (run.epoch - 1)


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
        for name, loader, views, weights in _passes(run, source):
            spill = run.run_dir / ".{}.features"
            label = f"caching {name} {'features' if cut is None else 'prefix outputs'}"
            progress = functools.partial(run.console.progress, label=label)
            made = extract(
                run.model.backbone, loader, run.device, spill, run.numerics, name, forward,
                progress, views=max(1, views), choose_view=_chooser(loader, run.epoch),
            )  # fmt: skip
            made.first_epoch, made.weights = run.epoch, weights
            cache.append(made)
        filled = (time.perf_counter() - started, sum(len(f.labels) for f in cache))
        train = cache[0].batches(loaders.train.batch_sampler)
        val = cache[1].batches(loaders.val.batch_sampler) if len(cache) > 1 else loaders.val
        if cut is None:
            converge = _converges(run) and fits(cache[0])
            yield Feed(run.model.head, run.model, train, val, cached=True, filled=filled,
                       features=cache[0] if converge else None)  # fmt: skip
            return
        replay = Replay(run.model, cut, torch.zeros(1, 3, 1, 1, device=run.device))
        with cut.replaying():
            yield Feed(replay, replay, train, val, replay=True, filled=filled)
    finally:
        for features in cache:
            features.release()


def _passes(run: Run, source: Source) -> list[tuple[str, Any, int, torch.Tensor | None]]:
    """What to cache: (name, loader, augmented views, each view's probability) for the
    training and validation images (none without a validation split); training images are
    augmented views when random augmentations are chosen: drawn (equally likely), or every
    outcome of them."""
    loaders = run.loaders
    val = [("val", loaders.val, 0, None)] if len(loaders.val) else []
    if source.exact:
        probabilities, transforms = zip(*run.pipeline.outcomes, strict=True)
        train = outcome_loader(loaders.plain, list(transforms))
        return [("train", train, source.views, torch.tensor(probabilities)), *val]
    train = view_loader(loaders.train) if source.views else loaders.plain
    return [("train", train, source.views, None), *val]


def _chooser(loader: Any, first: int):
    """Sets which epoch's draws a view loader gives for view ``k`` (for an outcome loader,
    which outcome); None for other loaders."""
    if isinstance(loader, OutcomeLoader):
        return loader.choose
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, ViewSampler):
        return None

    def choose(view: int) -> None:
        sampler.epoch = first + view

    return choose
