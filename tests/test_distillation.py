"""Distillation (``--teacher RUN``): the teacher's logits reach every training step, from
the live images and from the caches, converted to the teacher's inputs; the built-in ``kd``
loss; a distillation loss from a plugin; bad teachers refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from helpers import TINY, tlplug
from tlplug import Engine, hookimpl
from tlplug.builtin.distillation import kd
from tlplug.data.images import open_rgb
from tlplug.data.transforms import Normalize, base_transform, normalize
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.ship.predict import load_classifier
from tlplug.train.feature_cache import TaughtBatches
from tlplug.train.teacher import load_teacher


class Recording:
    """A distillation-loss plugin: the labels' loss, with each step's logits kept."""

    name = "recording"

    def __init__(self):
        self.teacher_logits: list[torch.Tensor] = []

    @hookimpl
    def tlplug_register_distillation_losses(self, register):
        def make(*, scale: float = 1.0):
            def loss(logits, teacher_logits, hard_loss):
                self.teacher_logits.append(teacher_logits.detach().clone())
                return hard_loss * scale

            return loss

        register("recording", make)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, image_folder) -> Path:
    """A finished resnet10t run at 48 px on the three-class folder."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    engine = Engine.from_plugins(entrypoints=False, **{**TINY, "img_size": 48, "epochs": 1})
    engine.fit(image_folder, out=out, quiet=True)
    return out


def teacher_on_training_images(teacher_run: Path, folder: Path, student_run: Path):
    """The teacher's logits on every training image of ``folder`` as the student of
    ``student_run`` saw it without augmentation."""
    resolved = json.loads((student_run / "config.json").read_text())["resolved"]
    config = DataConfig(**resolved["data_config"])
    base, student = base_transform(config, resolved["img_size"]), normalize(config)
    host, cpu = PluginHost(entrypoints=False), torch.device("cpu")
    teacher, _ = load_teacher(teacher_run, host, cpu, resolved["classes"], student, None)
    images = [base(open_rgb(path)) for path in sorted((folder / "train").glob("*/*"))]
    return teacher(student(torch.stack(images)))


def assert_teachers_on_training_images(batches, teacher_run, folder, student_run) -> None:
    """Every row of every batch of ``batches`` is the teacher's logits on one of the
    training images (as the student saw them)."""
    reference = teacher_on_training_images(teacher_run, folder, student_run)
    for batch in batches:
        distance = torch.cdist(batch, reference).min(dim=1).values
        assert distance.max() < 1e-3 * reference.abs().max()


def test_kd_loss_by_hand():
    logits, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.5, 1.5, 0.0]])
    hard = torch.tensor(0.7)
    t = 3.0
    p_teacher = torch.softmax(teacher / t, 1)
    by_hand = (p_teacher * (p_teacher.log() - torch.log_softmax(logits / t, 1))).sum() * t * t
    assert kd(temperature=t, weight=1.0)(logits, teacher, hard).item() == pytest.approx(
        by_hand.item(), rel=1e-5
    )
    blended = kd(temperature=t, weight=0.25)(logits, teacher, hard)
    assert blended.item() == pytest.approx(0.25 * by_hand.item() + 0.75 * 0.7, rel=1e-5)
    assert kd(weight=1.0)(teacher, teacher, hard).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_takes_the_students_inputs_to_its_own(teacher_run):
    """A student at 32 px with other normalization statistics: the teacher re-normalizes and
    resizes its batch, giving what the teacher gives on those pixels at 48 px."""
    student = Normalize((0.5, 0.5, 0.5), (0.25, 0.2, 0.3))
    classes = ("stripes", "checker", "dots")  # another order than the teacher's (sorted)
    teacher, record = load_teacher(
        teacher_run, PluginHost(entrypoints=False), torch.device("cpu"), classes, student, None
    )
    assert record["img_size"] == 48 and record["backbone"] == "timm:resnet10t"
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    got = teacher(student(pixels))
    classifier = load_classifier(teacher_run, PluginHost(entrypoints=False))
    classifier.model.temperature = 1.0  # the teacher's raw logits
    resized = functional.interpolate(pixels.float(), (48, 48), mode="bilinear", antialias=True)
    mean, std = (
        torch.tensor(v).view(1, 3, 1, 1)
        for v in (classifier.normalize.mean, classifier.normalize.std)
    )
    with torch.no_grad():
        expected = classifier.model((resized / 255 - mean) / std)
    expected = expected[:, [classifier.classes.index(name) for name in classes]]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_every_step_gets_the_teachers_logits_cached_and_live(teacher_run, image_folder, tmp_path):
    """freeze-unfreeze without augmentation: the head stage trains on cached features (the
    teacher's logits cached with them), the full stage on live images; every step's
    teacher logits are the teacher's on one of the training images."""
    recording = Recording()
    engine = Engine.from_plugins(
        recording,
        entrypoints=False,
        **{**TINY, "augment": (), "epochs": 2, "precision": "fp32"},
        teacher=str(teacher_run),
        distill_loss="recording",
    )
    result = engine.fit(image_folder, out=tmp_path / "student", quiet=True)
    assert result.history[0]["feature_cache"]  # the head stage trained on the cache
    steps = 2 * (36 // TINY["batch_size"])  # the loader drops a last partial batch
    assert len(recording.teacher_logits) == steps
    assert_teachers_on_training_images(
        recording.teacher_logits, teacher_run, image_folder, tmp_path / "student"
    )
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["resolved"]["teacher"]["run"] == str(teacher_run.resolve())
    assert config["recipe"]["teacher"] == str(teacher_run.resolve())  # resumable anywhere
    assert config["resolved"]["distill_loss"]["name"] == "recording"


def test_no_teacher_no_teacher_logits(image_folder, tmp_path):
    recording = Recording()
    engine = Engine.from_plugins(recording, entrypoints=False, **TINY, distill_loss="recording")
    engine.fit(image_folder, out=tmp_path / "run", quiet=True)
    assert recording.teacher_logits == []
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["teacher"] is None


def test_cli_distils_and_refuses_a_teacher_of_other_classes(
    teacher_run, image_folder, class_folders, tmp_path, capsys
):
    args = ["--backbone", "timm:resnet10t", "--no-pretrained", "--img-size", "32"]
    args += ["--epochs", "1", "--workers", "0", "--batch-size", "8", "--no-plots"]
    code, _, err = tlplug(
        capsys,
        "run",
        "--data",
        image_folder,
        *args,
        "--teacher",
        teacher_run,
        "--distill-loss-opt",
        "temperature=3",
        "--out",
        tmp_path / "student",
    )
    assert code == 0, err
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["resolved"]["distill_loss"]["options"] == {"temperature": 3.0, "weight": 0.5}

    other = class_folders  # checker and rings
    code, _, err = tlplug(
        capsys, "run", "--data", other, *args, "--teacher", teacher_run, "--out", tmp_path / "x"
    )
    assert code != 0 and "a teacher must know the same classes" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()

    code, _, err = tlplug(
        capsys, "run", "--data", image_folder, *args, "--teacher", tmp_path, "--out", tmp_path / "y"
    )
    assert code != 0 and "is not a finished tlplug run" in err
    code, _, err = tlplug(
        capsys,
        "run",
        "--data",
        image_folder,
        *args,
        "--teacher",
        teacher_run,
        "--distill-loss-opt",
        "weight=2",
        "--out",
        tmp_path / "z",
    )
    assert code != 0 and "weight must be in [0, 1]" in err


def test_a_students_records_keep_the_labels_loss_beside_its_whole_loss(
    teacher_run, image_folder, tmp_path
):
    """With a teacher, the head trains by steps (not the converged probe, which fits the
    labels alone) and every epoch records the labels' cross-entropy beside the whole
    loss: what the stage guard compares at an unfreeze."""
    engine = Engine.from_plugins(
        entrypoints=False,
        **{**TINY, "probe": "converge", "epochs": 3},
        teacher=str(teacher_run),
        distill_loss_opts={"temperature": 4.0, "weight": 0.9},
    )
    result = engine.fit(image_folder, out=tmp_path / "student", quiet=True)
    assert "probe" not in result.history[0]  # the head took steps
    for record in result.history:
        assert record["train_labels_loss"] != pytest.approx(record["train_loss"])
    assert not any(record.get("rolled_back") for record in result.history)


def test_without_augmentation_the_teacher_runs_once_over_the_images(
    teacher_run, image_folder, tmp_path, monkeypatch
):
    """A full stage whose images are the same every epoch: the teacher's logits are
    computed in one pass before the stage, and every step's are the teacher's on images of
    its batch (two epochs, one teacher pass)."""
    recording = Recording()
    engine = Engine.from_plugins(
        recording,
        entrypoints=False,
        **{**TINY, "augment": (), "schedule": "full", "precision": "fp32"},
        teacher=str(teacher_run),
        distill_loss="recording",
    )
    passes = []
    original = TaughtBatches.__init__

    def counting(self, loader, taught):
        passes.append(len(taught.values))
        original(self, loader, taught)

    monkeypatch.setattr(TaughtBatches, "__init__", counting)
    engine.fit(image_folder, out=tmp_path / "student", quiet=True)
    assert passes == [36]  # one stage, one pass over the 36 training images
    assert len(recording.teacher_logits) == 2 * (36 // TINY["batch_size"])
    assert_teachers_on_training_images(
        recording.teacher_logits, teacher_run, image_folder, tmp_path / "student"
    )
