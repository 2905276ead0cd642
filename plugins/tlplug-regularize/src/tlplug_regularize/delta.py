"""DELTA without its attention: keep the backbone's feature maps near the starting network's.

Li, Xiong, Wang, Rao, Liu, Chen and Huan, "DELTA: DEep Learning Transfer using Feature Map
with Attention for Convolutional Networks", ICLR 2019. The paper's regulariser is::

    alpha * sum_j W_j * ||FM_j(w, x) - FM_j(w0, x)||^2  +  beta * ||w_head||^2 / 2

over the channels ``j`` of chosen layers, ``W_j`` being a supervised channel attention.
This module implements it with uniform attention (``W_j = 1``, the paper's "feature map"
variant) and the squared distance averaged over the elements of each layer's output:

    alpha * sum_layers mean((FM(w, x) - FM(w0, x))^2)  +  beta/2 * ||w_head||^2

The paper's attention weights (each channel's weight from how much zeroing it raises the
loss of the starting network with a head trained on the target data) are left out.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tlplug import Batch, OptionError, TlplugError, TransferModel

from .common import (
    Penalty,
    check_at_least,
    model_device,
    squared_norm,
    trainable,
)


def default_layers(model: TransferModel) -> tuple[str, ...]:
    """Module paths in ``model.backbone`` whose outputs are compared when none are given.

    A timm model's ``feature_info`` stages when it has them (for a ResNet: the stem's
    activation and layer1 to layer4), else the last module of every backbone layer group:
    the deepest module holding all of the group's parameters, or, for a group spread over
    several top-level modules (a stem), the last of those.
    """
    backbone = model.backbone
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, Sequence) and info:
        names = tuple(stage.get("module", "") for stage in info if isinstance(stage, dict))
        if names and all(_has_module(backbone, n) for n in names):
            return names
    local = {id(p): name for name, p in backbone.named_parameters()}
    full = dict(model.named_parameters())
    found: list[str] = []
    for group in model.groups:
        names = [local[id(full[p])] for p in group.params if id(full[p]) in local]
        paths = [n.rpartition(".")[0] for n in names]
        paths = [p for p in paths if p]  # a parameter on the backbone itself (a ViT's token)
        if not paths:
            continue
        layer = _common_prefix(paths) or paths[-1].split(".")[0]
        if layer not in found:
            found.append(layer)
    return tuple(found)


class Delta(Penalty):
    """``alpha * sum_layers mean((FM - FM0)^2) + beta/2 * ||w_head||^2``.

    Forward hooks on ``layers`` of the live backbone keep their outputs while a training
    step runs (grad enabled); the penalty then runs a frozen copy of the starting backbone
    (eval mode, no grad) on ``batch.images`` and compares layer by layer. Needs the
    images, so the engine keeps the feature cache off.
    """

    name = "delta"
    needs_images = True

    def __init__(
        self, model: TransferModel, alpha: float, beta: float, layers: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.layers = alpha, beta, layers
        self.device = model_device(model)
        self.head = list(model.head.parameters())
        # Copy before hooking, so the copy carries none of this penalty's hooks.
        self.source = copy.deepcopy(model.backbone).eval().requires_grad_(False)
        self._live: dict[str, torch.Tensor] = {}
        self._start: dict[str, torch.Tensor] = {}
        self._handles = []
        self._channels_last = False
        for path in layers:
            live = model.backbone.get_submodule(path)
            start = self.source.get_submodule(path)
            self._handles.append(live.register_forward_hook(self._keeper(self._live, path)))
            self._handles.append(start.register_forward_hook(self._keeper(self._start, path)))

    def _keeper(self, store: dict[str, torch.Tensor], path: str):
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            # Only the live model's training steps and the copy's own run are kept; an
            # evaluation pass (no grad) leaves the stores alone.
            if store is self._start or torch.is_grad_enabled():
                store[path] = output

        return keep

    def feature_term(self, images: torch.Tensor) -> torch.Tensor:
        """``sum_layers mean((FM - FM0)^2)`` for the live outputs of the last forward pass."""
        live = {path: self._live.pop(path, None) for path in self.layers}
        missing = [path for path, value in live.items() if value is None]
        if missing:
            raise TlplugError(
                f"regularizer 'delta' saw no output of backbone layer(s) {', '.join(missing)} "
                "in this training step"
            )
        dtypes = {v.dtype for v in live.values() if isinstance(v, torch.Tensor)}
        low = next((d for d in (torch.bfloat16, torch.float16) if d in dtypes), None)
        autocast = (
            torch.autocast(images.device.type, dtype=low)
            if low is not None
            else contextlib.nullcontext()
        )
        if not self._channels_last and _channels_last(images):
            self.source.to(memory_format=torch.channels_last)  # as the engine did the model
            self._channels_last = True
        with torch.no_grad(), autocast:
            self.source(images)
        start = dict(self._start)
        self._start.clear()
        terms = []
        for path in self.layers:
            now, then = live[path], start.get(path)
            if not isinstance(now, torch.Tensor) or not isinstance(then, torch.Tensor):
                raise TlplugError(
                    f"regularizer 'delta': backbone layer '{path}' does not output a tensor; "
                    "choose other layers with --regularizer-opt delta.layers=..."
                )
            if now.shape != then.shape:
                raise TlplugError(
                    f"regularizer 'delta': layer '{path}' gave shape {tuple(now.shape)} in "
                    f"training but {tuple(then.shape)} in the starting network"
                )
            terms.append((now.float() - then.float()).pow(2).mean())
        return torch.stack(terms).sum()

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The penalty for this step, from the feature maps its forward pass left."""
        if batch.images is None:
            raise TlplugError("regularizer 'delta' needs the images, but the step has none")
        value = torch.zeros((), device=self.device)
        if self.alpha:
            value = value + self.alpha * self.feature_term(batch.images)
        else:
            self._live.clear()
        if self.beta:
            value = value + self.beta / 2 * squared_norm(trainable(self.head), self.device)
        return self._tally(value)

    def remove(self) -> None:
        """Take the hooks off the live backbone (for use outside the engine)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._live.clear()

    def describe(self) -> dict[str, Any]:
        """Name, options (defaults included) and the layers compared."""
        return {
            "name": self.name,
            "alpha": self.alpha,
            "beta": self.beta,
            "layers": list(self.layers),
        }


def delta(
    model: TransferModel,
    *,
    alpha: float = 1.0,
    beta: float = 0.01,
    layers: tuple[str, ...] = (),
) -> Delta:
    """DELTA (Li et al. 2019) without attention: keep feature maps near the starting network's.

    ``alpha`` (at least 0) weighs the summed mean squared difference of the outputs of
    ``layers`` (module paths in the backbone; default: timm's feature stages, else each
    layer group's last module) between the model and a frozen copy of the starting one;
    ``beta`` (at least 0) weighs ``||w_head||^2 / 2``. Runs the copy on every training batch.
    """
    check_at_least("delta", "alpha", alpha, 0)
    check_at_least("delta", "beta", beta, 0)
    unknown = [path for path in layers if not _has_module(model.backbone, path)]
    if unknown:
        examples = ", ".join(default_layers(model)) or "none"
        raise OptionError(
            f"regularizer 'delta' option 'layers': the backbone has no module "
            f"{', '.join(repr(p) for p in unknown)}; its stages are {examples}"
        )
    chosen = tuple(layers) or default_layers(model)
    if not chosen:
        raise OptionError("regularizer 'delta' found no backbone layers; give option 'layers'")
    return Delta(model, alpha, beta, chosen)


def _channels_last(images: torch.Tensor) -> bool:
    return (
        images.dim() == 4
        and not images.is_contiguous()
        and images.is_contiguous(memory_format=torch.channels_last)
    )


def _has_module(module: nn.Module, path: str) -> bool:
    if not path:
        return False
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    shared = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        shared.append(level[0])
    return ".".join(shared)
