"""Numeric precision, memory layout and compilation: ``--precision``, channels-last
convnets and ``--compile``.

``auto`` picks bfloat16 autocast where the hardware computes it natively (CPUs with
AVX512-BF16 or AMX, NVIDIA GPUs from Ampere on) and fp32 elsewhere. ``fp16`` is for GPUs
and trains with a gradient scaler. Weights and optimizer state stay fp32 throughout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import attrs
import torch
from torch import nn

from tlplug.errors import OptionError
from tlplug.recipe import AUTO

Precision = Literal["fp32", "bf16", "fp16", "auto"]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None for plain fp32."""
    if precision == AUTO:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16":
        if device.type != "cuda":
            raise OptionError("--precision fp16 needs a CUDA GPU; on CPU use bf16 or auto")
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else None


@attrs.frozen
class Numerics:
    """How a run computes its batches: the autocast dtype (None: fp32), memory layout and
    the normalization that turns uint8 image batches into model inputs on the device."""

    dtype: torch.dtype | None = None
    channels_last: bool = False
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = attrs.field(default=None, eq=False)

    def inputs(self, batch: Any, device: torch.device) -> torch.Tensor:
        """Move an input batch to ``device`` in the run's memory layout; normalize it there
        if it holds uint8 pixels, augmenting them first if they come with each image's
        draws (a :class:`~tlplug.data.batched.Drawn` batch)."""
        batch = batch.to(device, non_blocking=True)
        if not isinstance(batch, torch.Tensor):  # stored pixels and their draws
            batch = self.normalize(batch)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if not batch.is_floating_point():
            if self.normalize is None:
                raise TypeError("uint8 image batch but no normalization to apply")
            batch = self.normalize(batch)
        return batch

    def autocast(self, device: torch.device):
        """A context that runs the forward pass in the run's precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def describe(self) -> dict:
        """JSON-ready record for config.json."""
        names = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
        return {"precision": names[self.dtype], "channels_last": self.channels_last}


@cache
def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (Linux: AVX512-BF16 or AMX flags)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def is_convnet(model: nn.Module) -> bool:
    """True when convolutions hold most of ``model``'s weights (channels-last pays off)."""
    total = sum(p.numel() for p in model.parameters())
    conv = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()
    )
    return total > 0 and conv / total > 0.5


FP32 = Numerics()


@attrs.frozen
class Compiled:
    """A model as a training step uses it, with ``backbone`` compiled by ``torch.compile``
    (sharing the model's parameters) and the ``head`` as it is."""

    backbone: Callable[[torch.Tensor], torch.Tensor]
    head: nn.Module


def compile_for_training(model: nn.Module, device: torch.device) -> Compiled:
    """Compile ``model.backbone`` for training steps. On CPU, torch.compile builds C++
    kernels, so a missing compiler is an error that says so. Compilation happens at the
    first step and again when a stage changes which parameters train."""
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")
    ):
        raise OptionError(
            "--compile on CPU needs a C++ compiler (g++ or clang++); install one or drop --compile"
        )
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a graph it cannot compile runs eagerly
    return Compiled(torch.compile(model.backbone), model.head)


def numerics_for(
    recipe: Any, model: nn.Module, device: torch.device, img_size: int, norm: Callable
) -> Numerics:
    """A run's precision, memory layout and input normalization. Channels-last is on for
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
            raise OptionError(
                f"{recipe.backbone} does not run channels-last; drop --channels-last"
            ) from None
        model.to(memory_format=torch.contiguous_format)
        return Numerics(dtype, False, norm)
    finally:
        model.train(was_training)
    return trial
