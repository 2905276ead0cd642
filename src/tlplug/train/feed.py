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

from tlplug.compute.distributed import wrap_step
from tlplug.data.loaders import OutcomeLoader, ViewSampler, outcome_loader, view_loader
from tlplug.model.transfer import HEAD_GROUP
from tlplug.recipe import AUTO, DEFAULT_VIEWS
from tlplug.run import Run, Source
from tlplug.train.feature_cache import Features, TaughtBatches, extract
from tlplug.train.prefix_cache import PrefixCut, Replay, find_cut, prefix_output
from tlplug.train.probe import MAX_ELEMENTS, fits, linear_layer
from tlplug.train.stages import Stage
from tlplug.train.step import StepForward, StepInputs


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
    inputs: StepInputs | None = None  # what the stage's steps use, once they are made

    def step_inputs(self, run: Run) -> StepInputs:
        """What this stage's training steps use (made at its first step, after the stage
        is applied: the data-parallel wrapper covers the parameters it trains)."""
        if self.inputs is None:
            forward = wrap_step(StepForward(self.stepped, self.cached), run.world)
            self.inputs = StepInputs(
                self.stepped,
                forward,
                run.device,
                run.loss,
                run.numerics,
                self.batch_augment,
                self.cached,
                self.replay,
                run.recipe.accumulate,
                run.world,
            )
        return self.inputs


def choose_source(run: Run, stage: Stage) -> tuple[Source, PrefixCut | None]:
    """Where ``stage`` gets its inputs, and the frozen-prefix cut when it replays one."""
    recipe, model = run.recipe, run.model
    if stage.biases or not stage.trainable or stage.trainable[0] == model.groups[0].name:
        return Source(), None
    cache = "features" if stage.trainable == (HEAD_GROUP,) else "prefix"
    # A penalty that keeps the probe adds nothing to a head the probe fits: no images needed.
    probed = cache == "features" and _converges(run)
    needing = tuple(
        name
        for name, penalty in _penalties(run)
        if getattr(penalty, "needs_images", False) and not (probed and _keeps_probe(penalty))
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
        ("augmentation", bool(needs_images) and recipe.cache_features == AUTO, needs_images),
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
        linear = run.recipe.probe == "converge" and linear_layer(run.model.head) is not None
        stepped = tuple(n for n, p in _penalties(run) if linear and not _keeps_probe(p))
        return Source(cache, True, names=batch, views=views, drawn=drawn, stepped=stepped), None
    size = run.resolved.img_size
    cut = find_cut(model, stage, size, run.device, run.numerics)
    if cut is None:
        return Source(cache, False, "no-cut"), None
    return Source(cache, True, names=run.pipeline.varying, cut=cut.name), cut


def _converges(run: Run) -> bool:
    """True when a head-only stage of ``run`` is fit to convergence rather than by epochs
    (if its features fit in memory): a linear head, ``--probe converge``, no penalty
    that must be added to every step of the head's training and no teacher (the probe fits
    the labels alone; a head trained by steps with the teacher did better on the bench)."""
    return (
        run.recipe.probe == "converge"
        and linear_layer(run.model.head) is not None
        and all(_keeps_probe(penalty) for _, penalty in _penalties(run))
        and run.loss.distillation is None
    )


def _penalties(run: Run) -> list[tuple[str, Any]]:
    """Each regularizer's name and penalty."""
    chosen = run.parts["regularizers"]
    return [(c.strategy.name, p) for c, p in zip(chosen, run.loss.penalties, strict=True)]


def _keeps_probe(penalty: Any) -> bool:
    """Whether a penalty lets a head-only stage fit its head by the converged probe: it says
    so (``keeps_probe = True``) because on a frozen backbone it is constant, or an L2 term on
    the head, which the probe's own L2 strength (chosen on held-out images) replaces."""
    return bool(getattr(penalty, "keeps_probe", False))


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
        taught = _taught_once(run)
        train = loaders.train if taught is None else TaughtBatches(loaders.train, taught)
        try:
            yield Feed(run.model, stepped, train, loaders.val, run.batch_augment)
        finally:
            if taught is not None:
                taught.release()
        return
    started = time.perf_counter()
    cache = []
    try:
        for name, loader, views, weights in _passes(run, source):
            cache.append(_fill(run, name, loader, views, weights, cut))
        filled = (time.perf_counter() - started, sum(len(f.labels) for f in cache))
        train = cache[0].batches(loaders.train.batch_sampler)
        val = cache[1].batches(loaders.val.batch_sampler) if len(cache) > 1 else loaders.val
        if cut is None:
            converge = _converges(run) and fits(cache[0])
            yield Feed(
                run.model.head,
                run.model,
                train,
                val,
                cached=True,
                filled=filled,
                features=cache[0] if converge else None,
            )
            return
        replay = Replay(run.model, cut, torch.zeros(1, 3, 1, 1, device=run.device))
        with cut.replaying():
            yield Feed(replay, replay, train, val, replay=True, filled=filled)
    finally:
        for features in cache:
            features.release()


def head_features(run: Run) -> Features | None:
    """The training images' features as a head stage fit by the converged probe caches
    them (every view it fits on), computed now; None when such a stage would not fit its
    head by the probe (:func:`fits_by_probe`). The caller releases them."""
    stage = Stage(0, (HEAD_GROUP,))
    if not fits_by_probe(run, stage):
        return None
    source, _ = choose_source(run, stage)
    return _fill(run, *_passes(run, source)[0], None)


def fits_by_probe(run: Run, stage: Stage) -> bool:
    """Whether ``stage`` trains only a linear head, fit to convergence on cached features."""
    if stage.trainable != (HEAD_GROUP,) or stage.biases or not _converges(run):
        return False
    source, _ = choose_source(run, stage)
    size = len(run.loaders.plain.dataset) * max(1, source.views)
    return source.used and size * linear_layer(run.model.head).in_features <= MAX_ELEMENTS


def _fill(
    run: Run,
    name: str,
    loader: Any,
    views: int,
    weights: torch.Tensor | None,
    cut: PrefixCut | None,
) -> Features:
    """One pass of the cache: ``loader``'s images (``views`` of each) through the backbone,
    or through the frozen prefix up to ``cut``; the training images through the teacher
    too, when the run distils one."""
    forward = (lambda images: prefix_output(run.model, cut, images)) if cut else None
    spill = run.scratch_dir / ".{}.features"
    label = f"caching {name} {'features' if cut is None else 'prefix outputs'}"
    progress = functools.partial(run.console.progress, label=label)
    made = extract(
        run.model.backbone,
        loader,
        run.device,
        spill,
        run.numerics,
        name,
        forward,
        progress,
        views=max(1, views),
        choose_view=_chooser(loader, run.epoch),
        world=run.world,
        teacher=run.loss.taught if name == "train" and run.loss.distillation else None,
    )
    made.first_epoch, made.weights = run.epoch, weights
    return made


def _taught_once(run: Run) -> Features | None:
    """The teacher's logits on every training image, computed now, when the run distils
    and its training images are the same every epoch (no augmentation at all); else None.
    The caller releases them."""
    pipeline = run.pipeline
    if run.loss.distillation is None or pipeline.train is not None or pipeline.varying:
        return None
    progress = functools.partial(run.console.progress, label="teacher on the training images")
    return extract(
        run.model.backbone,
        run.loaders.plain,
        run.device,
        run.scratch_dir / ".{}.teacher",
        run.numerics,
        "train",
        run.loss.taught,
        progress,
        world=run.world,
    )


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
