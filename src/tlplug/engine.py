"""The engine: composes the plugins' strategies into one training run; fit and load."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from tlplug import __version__, checkpoint, rundir
from tlplug.adapters import Adapter, attach_adapter
from tlplug.background_writer import BackgroundWriter
from tlplug.build import (
    Parts,
    augmentation_phase,
    build_backbone,
    build_model,
    make_plan,
    probe,
    resolve,
)
from tlplug.console import Console
from tlplug.data import load_data
from tlplug.data.decoded import DecodedImages
from tlplug.data.loaders import (
    TransformedImages,
    balanced_weights,
    default_workers,
    epoch_seed,
    make_loader,
)
from tlplug.data.sources import Skipped
from tlplug.data.transforms import Normalize, OneOf, build_transforms, normalize
from tlplug.errors import TlplugError
from tlplug.feature_cache import Features, extract
from tlplug.freezing import apply_stage, train_mode
from tlplug.interrupt import Interrupted, StopRequest
from tlplug.loss import TrainingLoss, class_weights
from tlplug.memory import peak_mb, reset_peak
from tlplug.model import BACKBONE_PREFIX, HEAD_GROUP, HEAD_PREFIX, TransferModel, count_params
from tlplug.optim import StageScaledScheduler, build_optimizer, group_lrs, lr_multipliers
from tlplug.plugins import PluginHost
from tlplug.precision import Numerics, autocast_dtype, compile_for_training, is_convnet
from tlplug.prefix_cache import PrefixCut, Replay, find_cut, prefix_output
from tlplug.recipe import Recipe
from tlplug.run import Run
from tlplug.schedule import stage_at
from tlplug.training import Diverged, NonFinite, evaluate, fit_batch_size, train_epoch
from tlplug.weights import save_atomic

DECODE_FAILURES = ".decode-failures"  # appended to by loader processes, read at the end


@attrs.frozen
class Loaders:
    """A run's loaders: training (augmented), validation, the training images as evaluation
    sees them (what a feature cache holds), and the test images if the data has them."""

    train: Any
    val: Any
    plain: Any
    test: Any = None

    def all(self) -> list[Any]:
        """Every loader there is."""
        return [x for x in (self.train, self.val, self.plain, self.test) if x is not None]


@attrs.frozen
class FitResult:
    """What :meth:`Engine.fit` returns: the outcome and where the run directory is."""

    best_val_acc: float
    best_epoch: int
    final_val_acc: float
    run_dir: Path
    history: list[dict[str, Any]]


class Engine:
    """A recipe bound to a set of plugins; trains runs and loads them back."""

    def __init__(self, plugins: PluginHost, recipe: Recipe):
        self.plugins = plugins
        self.parts: Parts = resolve(plugins, recipe)
        # Keep the options typed as the strategies declare them, so config.json is exact.
        self.recipe = attrs.evolve(
            recipe,
            backbone_opts=self.parts.provider.options,
            head_opts=self.parts.head.options,
            schedule_opts=self.parts.schedule.options,
            lr_schedule_opts=self.parts.lr_schedule.options,
            augment_opts={
                c.strategy.name: c.options for c in self.parts.augmentations if c.options
            },
            # A schedule may imply its adapter; record it so config.json and --resume have it.
            adapter=self.parts.adapter.strategy.name if self.parts.adapter else None,
            adapter_opts=self.parts.adapter.options if self.parts.adapter else {},
            regularizer_opts={
                c.strategy.name: c.options for c in self.parts.regularizers if c.options
            },
        )
        for choice in self.parts.augmentations:  # their factories check option values
            choice.strategy.factory(recipe.img_size or 32, **choice.options)

    @classmethod
    def from_plugins(cls, *plugins: Any, entrypoints: bool = True, **recipe: Any) -> Engine:
        """Build an engine from plugin objects or modules plus (unless turned off) every
        installed plugin; ``recipe`` keys mirror the CLI options (``backbone=``, ``lr=``...)."""
        return cls(PluginHost(plugins, entrypoints=entrypoints), Recipe.from_kwargs(**recipe))

    def fit(
        self,
        data: str | os.PathLike | None = None,
        *,
        epochs: int | None = None,
        out: str | os.PathLike | None = None,
        overwrite: bool = False,
        quiet: bool = False,
    ) -> FitResult:
        """Train on ``data`` (a folder; None for the synthetic set) and write a run directory."""
        recipe = attrs.evolve(self.recipe, epochs=epochs) if epochs is not None else self.recipe
        recipe.check()
        console = Console(quiet)
        out_dir = Path(out) if out is not None else rundir.default_run_dir(recipe.backbone)
        rundir.check_run_dir(out_dir, overwrite)
        run, loaders, announce = self._prepare(recipe, data, out_dir)
        rundir.claim_run_dir(out_dir, overwrite)
        self.plugins.hook.tlplug_run_start(run=run)
        rundir.write_json(out_dir / rundir.CONFIG, run.config)
        announce(console)
        return self._train(run, loaders, console)

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike,
        *plugins: Any,
        entrypoints: bool = True,
        quiet: bool = False,
    ) -> FitResult:
        """Continue the interrupted run in ``run_dir`` after its last finished epoch."""
        run_dir = Path(run_dir)
        config = rundir.read_json(run_dir / rundir.CONFIG)
        state = checkpoint.read_resume(run_dir / checkpoint.RESUME)
        try:
            recipe = Recipe.from_json(config["recipe"])
            data = config["resolved"]["data"]
        except (KeyError, TypeError) as exc:
            raise TlplugError(f"{run_dir / rundir.CONFIG} is incomplete ({exc})") from None
        if state.epoch >= recipe.epochs:
            raise TlplugError(f"{run_dir} already finished all {recipe.epochs} epochs")
        # The batch size --auto-batch-size found is part of the run: the schedule counts steps.
        batch_size = config["resolved"].get("batch_size", recipe.batch_size)
        recipe = attrs.evolve(recipe, batch_size=batch_size, auto_batch_size=False)
        engine = cls(PluginHost(plugins, entrypoints=entrypoints), recipe)
        run, loaders, announce = engine._prepare(engine.recipe, _data_spec(data), run_dir)
        _check_same_run(run.config["resolved"], config["resolved"], run_dir)
        run.config = config
        best = checkpoint.restore(run, state)
        run.history = rundir.truncate_metrics(run_dir / rundir.METRICS, run.epoch)
        console = Console(quiet)
        engine.plugins.hook.tlplug_run_start(run=run)
        announce(console)
        console.say(f"resuming after epoch {run.epoch} of {recipe.epochs}")
        return engine._train(run, loaders, console, best)

    def _prepare(self, recipe: Recipe, data, out_dir: Path):
        """Build everything a run needs, writing nothing: the run, its loaders (train,
        validation, and the training images as evaluation sees them, for a feature cache), and a
        function that prints what was built."""
        seed_everything(recipe.seed)
        splits = load_data(self.plugins, data, recipe)
        device = pick_device(recipe.device)

        backbone, report = build_backbone(self.parts.provider, recipe)
        img_size = recipe.img_size or splits.img_size or backbone.data_config.input_size
        probe(backbone, img_size, recipe.backbone)
        model = build_model(self.parts.head, backbone, len(splits.classes))
        adapter = None
        if self.parts.adapter is not None:
            choice = self.parts.adapter
            adapter = attach_adapter(
                model, choice.strategy.factory, choice.options, choice.strategy.name
            )
        plan = make_plan(self.parts, model.group_names(), recipe.epochs)
        model.to(device)
        penalties = [c.strategy.factory(model, **c.options) for c in self.parts.regularizers]
        loss = TrainingLoss(
            len(splits.classes),
            recipe.label_smoothing,
            class_weights(splits.train.labels, len(splits.classes))
            if recipe.balance == "loss"
            else None,
            penalties,
        )
        numerics = _numerics(recipe, model, device, img_size, normalize(backbone.data_config))
        batch_size = recipe.batch_size
        if recipe.auto_batch_size:
            batch_size = fit_batch_size(
                model, batch_size, img_size, len(splits.classes), device, numerics
            )
        loaders, workers, batch_augment = self._loaders(
            recipe, splits, backbone, img_size, device, batch_size
        )
        multipliers = lr_multipliers(model.group_names(), recipe)
        optimizer = build_optimizer(model, recipe, multipliers)
        scheduler = self._lr_scheduler(optimizer, recipe.epochs, len(loaders.train))
        config = {
            "tlplug_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe": recipe.to_json(),
            "resolved": self._resolved(recipe, backbone, report, model, plan, splits, img_size)
            | {
                "workers": workers,
                "device": str(device),
                "lr_multipliers": multipliers,
                "batch_size": batch_size,
                **numerics.describe(),
            },
            "versions": _versions(),
        }
        run = Run(
            recipe, config, model, optimizer, scheduler, plan, splits.classes, out_dir, device,
            numerics, adapter=adapter, loss=loss, batch_augment=batch_augment,
            skipped=splits.skipped,
            compiled=compile_for_training(model, device) if recipe.compile else None,
        )  # fmt: skip

        def announce(console: Console) -> None:
            _announce(console, run, backbone.weights, report, splits, img_size)

        return run, loaders, announce

    def _cache_choice(self, run: Run, stage) -> tuple[str | None, str]:
        """Whether ``stage`` trains on cached backbone features (``"features"``: only the head
        trains) or cached outputs of the frozen prefix (``"prefix"``: the top of the backbone
        trains too), or on images (None); and the line that says so."""
        recipe, run_penalties = run.recipe, run.loss.penalties
        if stage.biases or not stage.trainable or stage.trainable[0] == run.model.groups[0].name:
            return None, ""
        mode = "features" if stage.trainable == (HEAD_GROUP,) else "prefix"
        what = "feature cache" if mode == "features" else "frozen-prefix cache"
        if recipe.cache_features == "off":
            return None, f"{what} off (--cache-features off)"
        if recipe.bn_policy == "train":
            return None, (
                f"{what} off: with --bn-policy train the frozen layers' BatchNorm statistics "
                "change every batch"
            )
        needing = [
            c.strategy.name
            for c, penalty in zip(self.parts.regularizers, run_penalties, strict=True)
            if getattr(penalty, "needs_images", False)
        ]
        if needing:
            return None, f"{what} off: regularizer {', '.join(needing)} needs the images"
        names = ", ".join(c.strategy.name for c in self.parts.augmentations)
        if names and recipe.cache_features == "auto":
            return None, (
                f"{what} off: random augmentation ({names}) changes the images every "
                "epoch; --cache-features on caches the un-augmented images"
            )
        without = f" (without {names})" if names else ""
        if mode == "features":
            return mode, (
                f"feature cache on{without}: the backbone runs once over the data and the head "
                "trains on its features"
            )
        return mode, ""  # whether a cut exists is known only once it is looked for

    def _find_cut(self, run: Run, stage, console: Console) -> PrefixCut | None:
        """The stage's frozen-prefix cut, saying on the console what it saves."""
        size = run.config["resolved"]["img_size"]
        cut = find_cut(run.model, stage, size, run.device, run.numerics)
        if cut is None:
            console.say(
                "frozen-prefix cache off: no cut below the trainable groups gives the "
                "network's own output when replayed"
            )
        else:
            console.say(
                f"frozen-prefix cache on: the backbone up to {cut.name} runs once over the "
                "data; each step runs only the layers above it"
            )
        return cut

    def _lr_scheduler(self, optimizer, epochs: int, steps_per_epoch: int) -> StageScaledScheduler:
        """The chosen LR schedule over the whole run, wrapped to apply stage LR scales."""
        choice = self.parts.lr_schedule
        scheduler = choice.strategy.factory(
            optimizer, epochs * steps_per_epoch, steps_per_epoch, **choice.options
        )
        if not callable(getattr(scheduler, "step", None)) or not hasattr(scheduler, "state_dict"):
            raise TlplugError(
                f"LR schedule '{choice.strategy.name}' returned {type(scheduler).__name__}, "
                "not a torch LR scheduler"
            )
        return StageScaledScheduler(scheduler, optimizer)

    def _loaders(
        self, recipe: Recipe, splits, backbone, img_size: int, device: torch.device, batch_size: int
    ):
        """Train, validation and plain-train loaders with the backbone's preprocessing, the
        augmentations on the first only; and the batch-level augmentation, if any."""
        made = {"pixels": [], "tensor": [], "batch": []}
        for choice in self.parts.augmentations:
            transform = choice.strategy.factory(img_size, **choice.options)
            made[augmentation_phase(choice)].append(transform)
        base, train_tf = build_transforms(
            backbone.data_config, img_size, made["pixels"], made["tensor"]
        )
        batch_augment = OneOf(made["batch"]) if made["batch"] else None
        workers = default_workers(device.type) if recipe.workers is None else recipe.workers
        common = dict(workers=workers, seed=recipe.seed, pin_memory=device.type == "cuda")
        weights = balanced_weights(splits.train.labels) if recipe.balance == "sampler" else None

        random = bool(made["pixels"] or made["tensor"])

        def loader(images, transform=None, train=False):
            dataset = TransformedImages(images, base, transform, random=train and random)
            return make_loader(
                dataset, batch_size, train=train, weights=weights if train else None, **common
            )

        loaders = Loaders(
            train=loader(splits.train, train_tf, train=True),
            val=loader(splits.val),
            plain=loader(splits.train),
            test=loader(splits.test) if splits.test is not None else None,
        )
        return loaders, workers, batch_augment

    def _resolved(self, recipe, backbone, report, model, plan, splits, img_size) -> dict:
        """What the engine made of the recipe: the ``resolved`` part of config.json."""
        return {
            "backbone": {
                "provider": self.parts.provider.describe(),
                "model": self.parts.model_name,
                "weights": backbone.weights,
                "weights_report": report.summary() if report else None,
                "num_features": backbone.num_features,
                "classifier_keys": list(backbone.classifier),
            },
            "state_dict_prefixes": {"backbone": BACKBONE_PREFIX, "head": HEAD_PREFIX},
            "img_size": img_size,
            "data_config": backbone.data_config.to_json(),
            "classes": list(splits.classes),
            "data": {
                **splits.info,
                "num_train": len(splits.train),
                "num_val": len(splits.val),
                "num_test": len(splits.test) if splits.test is not None else 0,
                "num_skipped": len(splits.skipped),
            },
            "groups": [
                {"name": g.name, "params": count_params(model.group_params(g.name))}
                for g in model.groups
            ],
            "plan": [s.to_json() for s in plan],
            "head": self.parts.head.describe(),
            "schedule": self.parts.schedule.describe(),
            "lr_schedule": self.parts.lr_schedule.describe(),
            "augmentations": [c.describe() for c in self.parts.augmentations],
            "weight_decay": recipe.resolved_weight_decay,
            "weight_decay_on_bias_and_norm": recipe.decay_norm_bias,
            "bn_policy": recipe.bn_policy,
            "adapter": self.parts.adapter.describe() if self.parts.adapter else None,
            "regularizers": [c.describe() for c in self.parts.regularizers],
            "pinned_params": count_params(
                [p for n, p in model.named_parameters() if n in model.pinned]
            ),
        }

    def _train(
        self,
        run: Run,
        loaders: Loaders,
        console: Console,
        tally: dict[str, Any] | None = None,
    ) -> FitResult:
        """Train from the epoch after ``run.epoch`` to the end; ``tally`` carries the best
        result, time and skipped batches of a resumed run."""
        recipe, model = run.recipe, run.model
        train_loader, val_loader, plain_loader = loaders.train, loaders.val, loaders.plain
        tally = tally or {
            "best_acc": -1.0,
            "best_loss": float("inf"),
            "best_epoch": 0,
            "per_class": [[], []],
            "seconds": 0.0,
            "skipped_nonfinite": 0,
        }
        nonfinite = NonFinite(recipe.skip_nonfinite, tally["skipped_nonfinite"])
        started = time.perf_counter() - tally["seconds"]
        writer = BackgroundWriter()
        trainable_params = 0
        if run.stage >= 0:
            trainable_params = _apply_stage(model, run.plan[run.stage], writer)
        mode = self._cache_choice(run, run.plan[run.stage])[0] if run.stage >= 0 else None
        cache: tuple[Features, Features] | None = None
        cut: PrefixCut | None = None
        replaying = contextlib.ExitStack()  # the prefix stubs, installed for a stage
        failures = run.run_dir / DECODE_FAILURES
        for each in loaders.all():
            each.dataset.failures = failures
        decoded = _decode_once(run, loaders.all(), console)
        with (
            StopRequest() as stop,
            _released(lambda: cache),
            replaying,
            _written(writer),
            _removed(decoded),
        ):
            for epoch in range(run.epoch + 1, recipe.epochs + 1):
                run.epoch = epoch
                index = stage_at(run.plan, epoch - 1)
                stage = run.plan[index]
                stage_record = {}
                if index != run.stage:
                    run.stage = index
                    trainable_params = _apply_stage(model, stage, writer)
                    run.lr_scheduler.set_scale(stage.lr_scale)
                    stage_record = {"stage_start": True, "stage_lr": _stage_lrs(run, stage)}
                    console.say(_stage_line(run, stage, trainable_params, stage_record["stage_lr"]))
                    mode, why = self._cache_choice(run, stage)
                    if why:
                        console.say(why)
                    replaying.close()
                    _release(cache)
                    cache, cut = None, None
                    self.plugins.hook.tlplug_stage_start(run=run, stage=stage)
                seed_everything(epoch_seed(recipe.seed, epoch))
                train_loader.sampler.set_epoch(epoch)
                if mode == "prefix" and cut is None:
                    cut = self._find_cut(run, stage, console)
                    mode = "prefix" if cut else None
                filled = None  # (seconds, images) when this epoch fills the cache
                if mode and cache is None:
                    filling = time.perf_counter()
                    spill = run.run_dir / ".{}.features"
                    forward = (lambda x, c=cut: prefix_output(model, c, x)) if cut else None
                    cache = tuple(
                        extract(
                            model.backbone, loader, run.device, spill, run.numerics, name, forward
                        )
                        for name, loader in (("train", plain_loader), ("val", val_loader))
                    )
                    if cut is not None:
                        replaying.enter_context(cut.replaying())
                    filled = (time.perf_counter() - filling, sum(len(f.labels) for f in cache))
                train_mode(model, stage, recipe.bn_policy)
                reset_peak(run.device)
                net, train_batches, val_batches = model, train_loader, val_loader
                if cache is not None:
                    dummy = torch.zeros(1, 3, 1, 1, device=run.device)
                    net = Replay(model, cut, dummy) if cut else model.head
                    train_batches = cache[0].batches(train_loader.batch_sampler)
                    val_batches = cache[1].batches(val_loader.batch_sampler)
                stepped = net if cut else run.compiled or model  # what a training step calls
                try:
                    train = train_epoch(
                        stepped, train_batches, run.optimizer, run.lr_scheduler, run.device,
                        console, epoch, stop=stop, nonfinite=nonfinite,
                        numerics=run.numerics, loss=run.loss,
                        batch_augment=None if cache else run.batch_augment,
                        cached=cache is not None and cut is None, replay=cut is not None,
                    )  # fmt: skip
                except Diverged as exc:
                    raise Diverged(f"{exc}. {_kept(run, tally)}") from None
                if not train.complete:
                    raise Interrupted(
                        f"stopped by {stop.requested} during epoch {epoch}. "
                        f"{_kept(run, tally)}; continue with: tlplug run --resume {run.run_dir}",
                        128 + stop.signum,
                    )
                run.step += len(train_loader)
                validate = epoch % recipe.val_every == 0 or epoch == recipe.epochs
                val, correct, count = None, [], []
                if validate:
                    val, correct, count = evaluate(
                        net, val_batches, run.device, len(run.classes), run.numerics
                    )
                    run.lr_scheduler.epoch_end(val.loss)
                record = {
                    "epoch": epoch,
                    "stage": index,
                    "stage_name": stage.name,
                    **stage_record,
                    "trainable_groups": list(stage.trainable),
                    "bias_groups": list(stage.biases),
                    "trainable_params": trainable_params,
                    "bn_policy": recipe.bn_policy,
                    "lr_scale": stage.lr_scale,
                    "train_loss": train.loss,
                    "train_acc": train.acc,
                    "val_loss": val.loss if val else None,
                    "val_acc": val.acc if val else None,
                    "lr": group_lrs(run.optimizer),
                    "seconds": round(
                        train.seconds + (val.seconds if val else 0.0) + (filled or (0.0,))[0], 3
                    ),
                    "images_per_s": round(train.images / max(train.seconds, 1e-9), 1),
                    "cache_seconds": round(filled[0], 3) if filled else None,
                    "cache_images_per_s": round(filled[1] / filled[0], 1) if filled else None,
                    "skipped_nonfinite": nonfinite.skipped,
                    "feature_cache": cache is not None and cut is None,
                    "prefix_cache": cut.name if cut and cache else None,
                    "peak_memory_mb": peak_mb(run.device),
                }
                best = val is not None and (val.acc, -val.loss) > (
                    tally["best_acc"],
                    -tally["best_loss"],
                )
                with writer.together():
                    if best:
                        tally.update(best_acc=val.acc, best_loss=val.loss, best_epoch=epoch)
                        tally["per_class"] = [correct, count]
                        save_weights(
                            model, run.run_dir / rundir.WEIGHTS, run.config, writer, run.adapter
                        )
                    self.plugins.hook.tlplug_epoch_end(run=run, record=record)
                    run.history.append(record)
                    rundir.append_jsonl(run.run_dir / rundir.METRICS, record)
                    tally.update(
                        seconds=time.perf_counter() - started, skipped_nonfinite=nonfinite.skipped
                    )
                    checkpoint.save_resume(run.run_dir / checkpoint.RESUME, run, tally, writer)
                console.say(_epoch_line(record, recipe.epochs, best))
        summary = {
            "best_val_acc": tally["best_acc"],
            "best_epoch": tally["best_epoch"],
            "final_val_acc": run.history[-1]["val_acc"],
            "epochs": recipe.epochs,
            "seconds": round(time.perf_counter() - started, 2),
            "skipped_nonfinite": nonfinite.skipped,
            "classes": list(run.classes),
            "num_train": run.config["resolved"]["data"]["num_train"],
            "num_val": run.config["resolved"]["data"]["num_val"],
            "per_class_val_acc": _per_class(run.classes, *tally["per_class"]),
            "per_class_val_count": dict(zip(run.classes, tally["per_class"][1], strict=True)),
        }
        if loaders.test is not None:
            summary.update(self._test(run, loaders.test, console))
        skipped = _skipped_files(run.skipped, failures)
        summary["skipped_files"] = [s.to_json() for s in skipped]
        if len(skipped) > len(run.skipped):
            console.say(
                f"{len(skipped) - len(run.skipped)} more image(s) failed to decode while "
                "training and were replaced by another image of their class; see "
                "skipped_files in summary.json"
            )
        self.plugins.hook.tlplug_run_end(run=run, summary=summary)
        rundir.write_json(run.run_dir / rundir.SUMMARY, summary)
        console.say(
            f"best val_acc {tally['best_acc']:.4f} at epoch {tally['best_epoch']}; "
            f"run saved in {run.run_dir}\n"
            f"predict with: tlplug predict {run.run_dir} IMAGE..."
        )
        return FitResult(
            tally["best_acc"], tally["best_epoch"], summary["final_val_acc"], run.run_dir,
            run.history,
        )  # fmt: skip

    def _test(self, run: Run, loader, console: Console) -> dict[str, Any]:
        """Evaluate the saved best weights, as ``tlplug predict`` loads them, on the test
        images."""
        from tlplug.predict import load_classifier

        best = load_classifier(run.run_dir, self.plugins, str(run.device)).model
        stats, correct, count = evaluate(best, loader, run.device, len(run.classes), run.numerics)
        console.say(f"test_acc {stats.acc:.4f} ({stats.images} test images, best weights)")
        return {
            "test_acc": stats.acc,
            "test_loss": stats.loss,
            "num_test": stats.images,
            "per_class_test_acc": _per_class(run.classes, correct, count),
        }

    @classmethod
    def load(
        cls,
        run_dir: str | os.PathLike,
        *plugins: Any,
        entrypoints: bool = True,
        device: str = "cpu",
    ):
        """Rebuild the best model of a run directory, ready to predict (a :class:`Classifier`)."""
        from tlplug.predict import load_classifier

        return load_classifier(Path(run_dir), PluginHost(plugins, entrypoints=entrypoints), device)


def save_weights(
    model: TransferModel,
    path: Path,
    config: dict[str, Any],
    writer: BackgroundWriter | None = None,
    adapter: Adapter | None = None,
) -> None:
    """Write ``model``'s weights with the facts a reader needs in the safetensors metadata;
    with a ``writer``, snapshot them now and write them in the background. With an
    ``adapter``, the weights are those of the model without it (merged)."""
    metadata = {
        "format": "pt",
        "tlplug_version": __version__,
        "backbone": config["recipe"]["backbone"],
        "backbone_prefix": BACKBONE_PREFIX,
        "head_prefix": HEAD_PREFIX,
    }
    state = adapter.export(model) if adapter else model.state_dict()
    save_atomic(state, path, metadata, writer)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TlplugError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


def _announce(console: Console, run: Run, weights: str, report, splits, img_size: int) -> None:
    recipe = run.recipe
    console.say(
        f"tlplug {__version__}: {recipe.backbone} ({weights}) on {run.device}, {img_size}px"
    )
    if report is not None:
        console.say(f"weights {recipe.weights}: {report.summary()}")
    test = f" / {len(splits.test)} test" if splits.test is not None else ""
    console.say(
        f"data: {len(splits.train)} train / {len(splits.val)} val{test} images, "
        f"{len(splits.classes)} classes"
    )
    train_counts = Counter(splits.train.labels)
    val_counts = Counter(splits.val.labels)
    console.say(
        "per class (train/val): "
        + ", ".join(
            f"{name} {train_counts[i]}/{val_counts[i]}" for i, name in enumerate(splits.classes)
        )
    )
    most, least = max(train_counts.values()), min(train_counts.values())
    if most >= 3 * least and recipe.balance == "off":
        console.say(
            f"classes are imbalanced ({most} vs {least} training images); "
            "--balance sampler or --balance loss evens them out"
        )
    for line in splits.warnings:
        console.say(f"warning: {line}")
    if splits.skipped:
        first = splits.skipped[0]
        console.say(
            f"warning: skipped {len(splits.skipped)} file(s) that are not readable images "
            f"(listed in summary.json), e.g. {first.path}: {first.reason}"
        )
    groups = ", ".join(f"{g['name']} {g['params']:,}" for g in run.config["resolved"]["groups"])
    console.say(f"groups: {groups}")
    plan = "; ".join(f"epoch {s.start + 1}: {s.name}" for s in run.plan)
    console.say(f"schedule {recipe.schedule}: {plan}")
    console.say(f"run directory: {run.run_dir}")


def _numerics(
    recipe: Recipe, model: TransferModel, device: torch.device, img_size: int, norm: Normalize
) -> Numerics:
    """The run's precision, memory layout and input normalization. Channels-last is on for
    convnets unless asked otherwise, and off again for a model whose forward pass refuses it."""
    dtype = autocast_dtype(recipe.precision, device)
    wanted = recipe.channels_last
    if wanted is False or (wanted is None and not is_convnet(model.backbone)):
        return Numerics(dtype, False, norm)
    model.to(memory_format=torch.channels_last)
    trial = Numerics(dtype, True, norm)
    was_training = model.training
    try:
        with torch.no_grad(), trial.autocast(device):
            model.eval()(trial.inputs(torch.zeros(2, 3, img_size, img_size), device))
    except RuntimeError:
        if wanted:
            raise TlplugError(
                f"{recipe.backbone} does not run channels-last; drop --channels-last"
            ) from None
        model.to(memory_format=torch.contiguous_format)
        return Numerics(dtype, False, norm)
    finally:
        model.train(was_training)
    return trial


def _apply_stage(model: TransferModel, stage, writer: BackgroundWriter) -> int:
    """Freeze and unfreeze for ``stage``; checkpoints share one copy of what it keeps frozen
    (no optimizer step writes a parameter without a gradient). Returns the trainable count."""
    trainable = apply_stage(model, stage)
    writer.hold_still(p for p in model.parameters() if not p.requires_grad)
    return trainable


@contextlib.contextmanager
def _written(writer: BackgroundWriter):
    """Wait for the background writes when the block ends, so what is kept is on disk; a
    write error outranks a success but not the error that ended the block."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            writer.wait()
        raise
    writer.wait()


def _decode_once(run: Run, loaders, console: Console) -> list[DecodedImages]:
    """Give the loaders' datasets a decoded-image cache, one per image list, when the
    pixels take at most a quarter of the machine's memory."""
    size = run.config["resolved"]["img_size"]
    lists = {id(loader.dataset.images): loader.dataset.images for loader in loaders}
    total = sum(DecodedImages.nbytes(images, size) for images in lists.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total > memory / 4:
        console.say(
            f"decoded-image cache off: the pixels would take {total / 2**30:.1f} GiB, more "
            "than a quarter of this machine's memory; images are decoded every epoch"
        )
        return []
    shared = loaders[0].num_workers > 0  # workers fill one memory-mapped file together
    caches: dict[int, DecodedImages] = {}
    for loader in loaders:
        dataset = loader.dataset
        key = id(dataset.images)
        if key not in caches:
            file = run.run_dir / f".pixels-{len(caches)}" if shared else None
            caches[key] = DecodedImages(dataset.images, dataset.base, size, file)
        dataset.decoded = caches[key]
    console.say(f"images are decoded once and kept ({total / 2**20:.0f} MiB)")
    return list(caches.values())


@contextlib.contextmanager
def _removed(decoded: list[DecodedImages]):
    """Delete the decoded-image cache files when the block ends."""
    try:
        yield
    finally:
        for cache in decoded:
            cache.remove()


def _release(cache) -> None:
    for features in cache or ():
        features.release()


@contextlib.contextmanager
def _released(current):
    """Release the feature cache ``current()`` returns when the block ends, however it ends."""
    try:
        yield
    finally:
        _release(current())


def _per_class(classes, correct: list[int], count: list[int]) -> dict[str, float | None]:
    """Accuracy per class name; None for a class with no images."""
    return {
        name: (c / n if n else None) for name, c, n in zip(classes, correct, count, strict=True)
    }


def _skipped_files(found: tuple[Skipped, ...], failures: Path) -> list[Skipped]:
    """The files the data check left out, then those that failed to decode while training
    (read from, then removed with, the log the loaders append to)."""
    skipped = list(found)
    if failures.exists():
        seen = {s.path for s in skipped}
        for line in failures.read_text(encoding="utf-8").splitlines():
            path, _, reason = line.partition("\t")
            if path not in seen:
                seen.add(path)
                skipped.append(Skipped(path, reason))
        failures.unlink()
    return skipped


def _data_spec(data: dict[str, Any]) -> str | None:
    """The ``--data`` value that reads a run's data again, from config.json's record."""
    if "source" not in data:  # runs made before data sources were plugins
        return data.get("root") if data.get("kind") == "folder" else None
    return f"{data['source']}:{data['location']}"


def _kept(run: Run, tally: dict[str, Any]) -> str:
    """What of an ended run is safe on disk."""
    if not tally["best_epoch"]:
        return "No epoch finished, so nothing was saved"
    return (
        f"The best weights so far (epoch {tally['best_epoch']}) are kept in "
        f"{run.run_dir / rundir.WEIGHTS}, the state after epoch {run.epoch - 1} in "
        f"{run.run_dir / checkpoint.RESUME}"
    )


def _check_same_run(now: dict[str, Any], then: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume when the data or the model would differ from the run's own."""
    for key, what in (("classes", "classes"), ("groups", "layer groups"), ("plan", "plan")):
        if now[key] != then[key]:
            raise TlplugError(f"cannot resume {run_dir}: its {what} differ from what it had")
    for key in ("num_train", "num_val"):
        if now["data"][key] != then["data"][key]:
            raise TlplugError(
                f"cannot resume {run_dir}: its data now has {now['data'][key]} "
                f"{key[4:]} images, not {then['data'][key]}"
            )


def _stage_lrs(run: Run, stage) -> dict[str, float]:
    """The learning rate each training group starts the stage with."""
    lrs = group_lrs(run.optimizer)
    return {name: lrs[name] for name in run.model.group_names() if name in stage.training}


def _stage_line(run: Run, stage, params: int, lrs: dict[str, float]) -> str:
    parts = [", ".join(stage.trainable)] if stage.trainable else []
    if stage.biases:
        parts.append(f"the biases of {len(stage.biases)} groups")
    rates = ", ".join(f"{name} {lr:.2e}" for name, lr in lrs.items())
    scale = f", LR x{stage.lr_scale:g}" if stage.lr_scale != 1 else ""
    return (
        f"stage {run.stage + 1}/{len(run.plan)} '{stage.name}' from epoch {run.epoch}: "
        f"training {' and '.join(parts)} ({params:,} parameters); lr {rates}{scale}; "
        f"frozen BatchNorm policy '{run.recipe.bn_policy}'"
    )


def _epoch_line(record: dict[str, Any], epochs: int, best: bool) -> str:
    lrs = sorted(set(record["lr"].values()))
    lr = f"{lrs[0]:.2e}" if len(lrs) == 1 else f"{lrs[0]:.2e}..{lrs[-1]:.2e}"
    return (
        f"epoch {record['epoch']}/{epochs} [{record['stage_name']}] "
        f"train_loss {record['train_loss']:.4f} "
        + (
            f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f}"
            f"{' *' if best else ''} "
            if record["val_acc"] is not None
            else "(no validation) "
        )
        + f"lr {lr} "
        f"{record['seconds']:.1f}s {record['images_per_s']:.0f} img/s"
        + (f" peak {record['peak_memory_mb']:.0f} MiB" if record["peak_memory_mb"] else "")
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for name in ("torch", "torchvision", "timm"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
