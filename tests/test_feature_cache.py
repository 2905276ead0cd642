"""Training the head on cached backbone features."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from helpers import RunDirFiles
from tlplug import Engine, augmentation, hookimpl
from tlplug.rundir.checkpoint import read_resume
from tlplug.train import feature_cache

PROBE = dict(
    backbone="timm:resnet10t",
    pretrained=False,
    img_size=32,
    batch_size=8,
    workers=0,
    schedule="linear-probe",
    augment=(),
    epochs=3,
    lr=0.01,
    keep_state=True,
    plots=False,
    probe="epochs",  # the head trains by steps, so cached and uncached runs can be compared
)


def head_of(run_dir):
    state = read_resume(run_dir / "resume.safetensors").tensors
    return {k: v for k, v in state.items() if k.startswith("model.head.")}


def test_cached_and_uncached_linear_probes_train_the_same_head(image_folder, tmp_path):
    runs = {}
    for mode in ("auto", "off"):
        result = Engine.from_plugins(entrypoints=False, cache_features=mode, **PROBE).fit(
            image_folder, out=tmp_path / mode, quiet=True
        )
        runs[mode] = result
    assert [r["feature_cache"] for r in runs["auto"].history] == [True] * 3
    assert [r["feature_cache"] for r in runs["off"].history] == [False] * 3
    cached, plain = head_of(tmp_path / "auto"), head_of(tmp_path / "off")
    for key in cached:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
    losses = [[r["train_loss"] for r in runs[m].history] for m in ("auto", "off")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert runs["auto"].best_val_acc == runs["off"].best_val_acc
    assert all(r["peak_memory_mb"] > 0 for r in runs["auto"].history)
    first, *later = runs["auto"].history  # the first epoch fills the cache, and says how fast
    assert first["cache_seconds"] > 0 and first["cache_images_per_s"] > 0
    assert first["seconds"] >= first["cache_seconds"]
    assert all(r["cache_seconds"] is None for r in later + runs["off"].history)


def test_cache_is_dropped_when_a_group_unfreezes_and_spills_to_a_file(
    image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT", 0)
    files = RunDirFiles(".*.features")
    recipe = PROBE | {"schedule": "freeze-unfreeze", "schedule_opts": {"frozen_epochs": 2}}
    result = Engine.from_plugins(files, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path, quiet=False
    )
    assert [r["feature_cache"] for r in result.history] == [True, True, False]
    assert files.seen == [[".train.features", ".val.features"]] * 2 + [[]]
    assert not list(tmp_path.glob(".*.features"))
    assert "feature cache on: the backbone runs once" in capsys.readouterr().out


def test_k_cached_views_train_the_head_as_k_uncached_augmented_epochs(
    image_folder, tmp_path, capsys
):
    recipe = PROBE | {"augment": ("flip", "crop")}  # 3 epochs: one cached view per epoch
    runs = {
        mode: Engine.from_plugins(entrypoints=False, cache_features=mode, **recipe).fit(
            image_folder, out=tmp_path / mode
        )
        for mode in ("auto", "off")
    }
    assert [r["feature_cache"] for r in runs["auto"].history] == [True] * 3
    assert not any(r["feature_cache"] for r in runs["off"].history)
    assert "over 3 augmented views (crop, flip)" in capsys.readouterr().out
    cached, plain = head_of(tmp_path / "auto"), head_of(tmp_path / "off")
    for key in cached:  # epoch k trains on view k: the very draws the uncached epoch k makes
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
    fewer = Engine.from_plugins(entrypoints=False, cache_views=2, **recipe).fit(
        image_folder, out=tmp_path / "two", quiet=True
    )  # with fewer views than epochs, epoch 3 sees view 1 again: another head
    assert fewer.history[-1]["train_loss"] != runs["auto"].history[-1]["train_loss"]


def test_a_batch_augmentation_turns_the_cache_off_unless_asked(image_folder, tmp_path, capsys):
    recipe = PROBE | {"augment": ("flip", "mixup"), "epochs": 1}
    result = Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=tmp_path / "a")
    assert result.history[0]["feature_cache"] is False
    assert "feature cache off: random augmentation (mixup)" in capsys.readouterr().out
    result = Engine.from_plugins(entrypoints=False, cache_features="on", **recipe).fit(
        image_folder, out=tmp_path / "b"
    )
    assert result.history[0]["feature_cache"] is True
    assert "(without mixup)" in capsys.readouterr().out


class Grayscale:
    """A deterministic augmentation: the image's luma in all three channels."""

    name = "grayscale-plugin"

    @hookimpl
    def tlplug_register_augmentations(self, register):
        register("grayscale", grayscale)


@augmentation(phase="pixels", random=False)
def grayscale(img_size: int):
    """Turn the image grey (deterministic)."""
    return v2.Grayscale(num_output_channels=3)


def test_a_deterministic_augmentation_keeps_the_cache_and_reaches_the_cached_images(
    image_folder, tmp_path, capsys
):
    runs = {}
    for mode in ("auto", "off"):
        runs[mode] = Engine.from_plugins(
            Grayscale(),
            entrypoints=False,
            **(PROBE | {"augment": ("grayscale",)}),
            cache_features=mode,
        ).fit(image_folder, out=tmp_path / mode)
    assert [r["feature_cache"] for r in runs["auto"].history] == [True] * 3
    assert "feature cache on: the backbone runs once" in capsys.readouterr().out
    cached, plain = head_of(tmp_path / "auto"), head_of(tmp_path / "off")
    for key in cached:  # the cached features are those of grey images, as training sees them
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
    colour = Engine.from_plugins(entrypoints=False, **PROBE).fit(
        image_folder, out=tmp_path / "colour", quiet=True
    )
    assert colour.history[-1]["train_loss"] != runs["auto"].history[-1]["train_loss"]


class Mirror:
    """A deterministic augmentation: every image mirrored."""

    name = "mirror-plugin"

    @hookimpl
    def tlplug_register_augmentations(self, register):
        register("mirror", mirror)


@augmentation(phase="pixels", order=20, random=False)
def mirror(img_size: int):
    """Mirror the image left to right (deterministic)."""
    return v2.RandomHorizontalFlip(p=1.0)


def test_a_converged_probe_caches_every_outcome_of_a_flip_once(image_folder, tmp_path, capsys):
    """A flip has two outcomes; a converged probe caches both, each with its probability,
    instead of drawing views. Its outcome pipelines give the very images a deterministic
    mirror (or no augmentation) gives: the same head, bit for bit."""
    probe = PROBE | {"probe": "converge", "epochs": 2}

    def fit(name: str, *plugins, **changes):
        engine = Engine.from_plugins(*plugins, entrypoints=False, **(probe | changes))
        engine.fit(image_folder, out=tmp_path / name, quiet=True)
        return head_of(tmp_path / name)

    both = Engine.from_plugins(entrypoints=False, **(probe | {"augment": ("flip",)}))
    result = both.fit(image_folder, out=tmp_path / "both")
    assert "over 2 augmented views (every outcome of flip)" in capsys.readouterr().out
    assert result.history[0]["probe"]["images"] == 36 and result.history[0]["feature_cache"]
    pairs = [
        (
            fit("always", augment=("flip",), augment_opts={"flip": {"p": 1.0}}),
            fit("mirror", Mirror(), augment=("mirror",)),
        ),
        (
            fit("never", augment=("flip",), augment_opts={"flip": {"p": 0.0}}),
            fit("none", augment=()),
        ),
    ]
    for outcome, deterministic in pairs:
        for key in outcome:
            assert torch.equal(outcome[key], deterministic[key])
    mirrored, plain = pairs[0][0], pairs[1][0]
    assert not all(torch.equal(mirrored[key], plain[key]) for key in plain)
    drawn = Engine.from_plugins(entrypoints=False, **(probe | {"augment": ("flip", "crop")}))
    drawn.fit(image_folder, out=tmp_path / "drawn")  # a crop lists no outcomes: drawn views
    assert "over 4 augmented views (crop, flip)" in capsys.readouterr().out


def test_outcome_views_reach_loader_worker_processes(image_folder, tmp_path):
    """Each outcome pass starts fresh workers with the chosen outcome's transform: two
    worker processes cache the very features the training process does."""
    probe = PROBE | {"probe": "converge", "epochs": 1, "augment": ("flip",)}
    for workers in (0, 2):
        Engine.from_plugins(entrypoints=False, **(probe | {"workers": workers})).fit(
            image_folder, out=tmp_path / str(workers), quiet=True
        )
    alone, workers = head_of(tmp_path / "0"), head_of(tmp_path / "2")
    assert all(torch.equal(alone[key], workers[key]) for key in alone)
