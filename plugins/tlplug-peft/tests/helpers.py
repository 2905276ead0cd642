"""What this plugin's tests share besides fixtures (those are in conftest.py); test
modules import these from here."""

from __future__ import annotations

import torch
from tlplug import hookimpl

# The models are tiny; with more threads than free cores (a busy CI machine) torch's thread
# pool spends more time waiting than computing.
torch.set_num_threads(1)


VIT = "timm:vit_tiny_patch16_224"


RESNET = "timm:resnet10t"


# A constant LR: every step moves every trainable tensor, so "unchanged" means "frozen".
FAST = {
    "pretrained": False,
    "img_size": 32,
    "batch_size": 6,
    "workers": 0,
    "lr": 1e-3,
    "lr_schedule": "constant",
}


class Watch:
    """A lifecycle plugin that keeps the run and a copy of its model state at the start of
    the run and after every epoch (``states[0]`` is the start)."""

    name = "watch"

    def __init__(self):
        self.run = None
        self.states: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def tlplug_run_start(self, run):
        self.run = run
        self.states.append(_copy(run.model))

    @hookimpl
    def tlplug_epoch_end(self, run, record):
        self.states.append(_copy(run.model))


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lora_names(model: torch.nn.Module) -> list[str]:
    """The LoRA parameters of ``model`` (peft names them ``…lora_A.default.weight``)."""
    return [n for n, _ in model.named_parameters() if ".lora_" in n]


def head_names(model: torch.nn.Module) -> list[str]:
    """The head's parameters."""
    return [n for n, _ in model.named_parameters() if n.startswith("head.")]


def changed(before: dict, after: dict, names) -> list[str]:
    """The names among ``names`` whose tensors differ between two states."""
    return [n for n in names if not torch.equal(before[n], after[n])]
