"""The ``lora`` adapter: LoRA injected into the backbone by peft, merged away on export.

peft replaces each target layer in place by a LoRA layer that keeps the original as
``base_layer``, so module paths stay as they were and a parameter such as
``backbone.blocks.0.attn.qkv.weight`` lives on as ``backbone.blocks.0.attn.qkv.base_layer.weight``
(pinned, the same tensor) next to the new ``…qkv.lora_A.default.weight`` and
``…qkv.lora_B.default.weight`` (trainable, in the layer group of ``blocks.0``).
"""

from __future__ import annotations

import re

import torch
from tlplug import Adapter, OptionError, TlplugError, TransferModel
from torch import nn

from tlplug_peft.targets import select_targets

ADAPTER_NAME = "default"  # peft's adapter name; it appears in the LoRA parameter names


def lora(
    model: TransferModel,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: str = "auto",
) -> Adapter:
    """LoRA on the backbone's linear and conv layers (peft); the base weights stay pinned.

    Each target layer ``W`` becomes ``W + (alpha / r) * B @ A`` with rank-``r`` factors
    ``A`` and ``B`` (``B`` starts at zero, so training starts from the pretrained model);
    ``dropout`` acts on the input of ``A`` while training. ``targets``: ``auto``, a
    comma-separated list of layer-name suffixes, or a regex over module paths (see
    :func:`tlplug_peft.targets.select_targets`). Every original backbone parameter, biases and
    norms included, is pinned; the head trains as the schedule says. The weights saved for
    prediction are the plain model's with LoRA merged in.
    """
    _check_options(r, alpha, dropout)
    paths = select_targets(model.backbone, targets)
    plain_keys = list(model.state_dict())
    original = {id(p) for p in model.backbone.parameters()}
    _inject(model.backbone, paths, r, alpha, dropout)
    pinned = frozenset(
        name
        for name, param in model.named_parameters()
        if name.startswith(TransferModel.BACKBONE_PREFIX) and id(param) in original
    )
    layers = tuple(TransferModel.BACKBONE_PREFIX + p for p in paths)
    return Adapter(pinned=pinned, export=MergedExport.build(model, layers, plain_keys))


class MergedExport:
    """``Adapter.export`` for peft LoRA: the plain model's state dict, LoRA merged in.

    Holds, for every key of the model as it was before LoRA, the key it has now (an adapted
    layer's ``weight`` and ``bias`` moved under ``base_layer``). Calling it computes each
    adapted layer's ``weight + delta`` as a new tensor; the live model is not changed, so
    it can be called between epochs while training goes on.
    """

    def __init__(self, keys: dict[str, str], layers: tuple[str, ...]):
        self.keys = keys
        self.layers = layers

    @classmethod
    def build(
        cls, model: TransferModel, layers: tuple[str, ...], plain_keys: list[str]
    ) -> MergedExport:
        """Map ``plain_keys`` (the state-dict keys before LoRA) onto ``model`` as it is now."""
        adapted = set(layers)
        keys = {}
        for key in plain_keys:
            module, _, leaf = key.rpartition(".")
            keys[key] = f"{module}.base_layer.{leaf}" if module in adapted else key
        missing = sorted(set(keys.values()) - set(model.state_dict()))
        if missing:
            raise TlplugError(
                f"peft moved weights where tlplug-peft cannot find them: {missing[0]}"
            )
        return cls(keys, layers)

    def __call__(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict of ``model`` without LoRA, each adapted weight merged."""
        live = model.state_dict()
        state = {plain: live[key] for plain, key in self.keys.items()}
        with torch.no_grad():
            for path in self.layers:
                layer = model.get_submodule(path)
                weight = layer.get_base_layer().weight
                delta = layer.get_delta_weight(ADAPTER_NAME)
                state[f"{path}.weight"] = weight.detach() + delta.to(weight.dtype)
        return state


def _check_options(r: int, alpha: float, dropout: float) -> None:
    if r < 1:
        raise OptionError(f"lora option r must be >= 1, got {r}")
    if not alpha > 0:
        raise OptionError(f"lora option alpha must be > 0, got {alpha}")
    if not 0 <= dropout < 1:
        raise OptionError(f"lora option dropout must be in [0, 1), got {dropout}")


def _inject(backbone: nn.Module, paths: list[str], r: int, alpha: float, dropout: float) -> None:
    """Replace the layers at ``paths`` by peft LoRA layers, in place."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
    except ImportError as exc:
        raise TlplugError(f"the lora adapter needs peft: pip install peft ({exc})") from None
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # A regex that matches exactly these paths (a list would match any path suffix).
        target_modules="(?:" + "|".join(re.escape(p) for p in paths) + ")",
        bias="none",
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    adapted = [p for p, m in backbone.named_modules() if isinstance(m, LoraLayer)]
    if adapted != paths:
        raise TlplugError(
            f"peft adapted {len(adapted)} layers where tlplug-peft asked for {len(paths)}"
        )
