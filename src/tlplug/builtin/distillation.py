"""Built-in distillation loss: ``kd``, the teacher's softened probabilities (Hinton et al.
2015, "Distilling the Knowledge in a Neural Network"), blended with the labels' loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlplug import hookimpl
from tlplug.errors import OptionError

if TYPE_CHECKING:
    import torch


@hookimpl
def tlplug_register_distillation_losses(register):
    register("kd", kd)


def kd(*, temperature: float = 2.0, weight: float = 0.5):
    """``weight * T² * KL(teacher_T || student_T) + (1 - weight) * cross-entropy``, both
    distributions softened by the temperature ``T``; the ``T²`` keeps the soft term's
    gradients on the scale of the hard one's. ``weight=1`` learns from the teacher alone."""
    if not temperature > 0:
        raise OptionError(f"--distill-loss-opt temperature must be > 0, got {temperature}")
    if not 0 <= weight <= 1:
        raise OptionError(f"--distill-loss-opt weight must be in [0, 1], got {weight}")

    def loss(
        logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor
    ) -> torch.Tensor:
        from torch.nn import functional

        student = functional.log_softmax(logits / temperature, dim=1)
        teacher = functional.log_softmax(teacher_logits / temperature, dim=1)
        soft = functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
        return weight * temperature**2 * soft + (1 - weight) * hard_loss

    return loss
