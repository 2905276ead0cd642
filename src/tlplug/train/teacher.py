"""Distillation: a finished run's model (the teacher) and the loss a student learns it by.

The teacher sees exactly the student's training inputs: the same augmented (and mixed)
images, converted to the teacher's normalization and image size when they differ. Where a
stage's inputs are cached (head stages, frozen-prefix replays), the cache holds the
teacher's outputs on the cached images too, so the teacher runs once per cached image.
The teacher's logits are its raw ones: a calibrated run's temperature is not applied, the
distillation loss has a temperature of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.nn import functional

from tlplug.compute.precision import Numerics
from tlplug.data.transforms import Normalize
from tlplug.errors import TlplugError
from tlplug.plugins.host import PluginHost
from tlplug.ship.predict import load_classifier

DistillationLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Teacher:
    """A finished run's model giving logits, in the student's class order, for batches of
    the student's normalized inputs."""

    def __init__(
        self,
        model: torch.nn.Module,
        order: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        img_size: int,
        numerics: Numerics,
    ):
        self.model, self.order, self.img_size, self.numerics = model, order, img_size, numerics
        self.scale, self.shift = scale, shift  # student's normalized pixels -> teacher's

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits for the student's normalized ``images``."""
        images = images.float() * self.scale + self.shift
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            size = (self.img_size, self.img_size)
            images = functional.interpolate(images, size, mode="bilinear", antialias=True)
        if self.numerics.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.numerics.autocast(images.device):
            logits = self.model(images)
        return logits.float()[:, self.order]


@attrs.frozen
class Distillation:
    """What a student learns from: the ``teacher`` and the ``loss`` blending its logits
    with the labels' loss (a ``--distill-loss`` strategy)."""

    teacher: Teacher
    loss: DistillationLoss
    record: dict[str, Any]  # what config.json says of the teacher


def load_teacher(
    run_dir: str | Path,
    plugins: PluginHost,
    device: torch.device,
    classes: Sequence[str],
    student: Normalize,
    dtype: torch.dtype | None,
) -> tuple[Teacher, dict[str, Any]]:
    """The model of the finished run ``run_dir`` as a teacher of a student trained on
    ``classes`` with the normalization ``student``, computing in ``dtype`` (the
    student's autocast precision, or None for float32); and config.json's record of it."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.json").is_file():
        raise TlplugError(
            f"--teacher {run_dir} is not a finished tlplug run (no config.json); give the "
            "directory of a run whose model should teach this one"
        )
    classifier = load_classifier(run_dir, plugins, str(device))
    known = {name: i for i, name in enumerate(classifier.classes)}
    missing = [name for name in classes if name not in known]
    if missing or len(known) != len(classes):
        raise TlplugError(
            f"--teacher {run_dir} was trained on classes {list(classifier.classes)}, the data "
            f"has {list(classes)}; a teacher must know the same classes"
        )
    model = classifier.model.eval()
    model.temperature = 1.0  # raw logits: the distillation loss has its own temperature
    s_mean, s_std, t_mean, t_std = (
        torch.tensor(values).view(1, 3, 1, 1)
        for values in (
            student.mean,
            student.std,
            classifier.normalize.mean,
            classifier.normalize.std,
        )
    )
    numerics = attrs.evolve(classifier.run_numerics(), dtype=dtype)
    teacher = Teacher(
        model,
        torch.tensor([known[name] for name in classes], device=device),
        (s_std / t_std).to(device),
        ((s_mean - t_mean) / t_std).to(device),
        int(classifier.config["resolved"]["img_size"]),
        numerics,
    )
    record = {
        "run": str(run_dir),
        "backbone": classifier.config["recipe"]["backbone"],
        "img_size": teacher.img_size,
        "params": sum(p.numel() for p in model.parameters()),
    }
    return teacher, record
