"""Which backbone layers get LoRA: the ``targets`` option turned into module paths.

A target is a layer whose LoRA form peft computes exactly and can merge back, since the
saved weights must be the plain model's: an ``nn.Linear``, or an ``nn.Conv2d`` that keeps
``nn.Conv2d.forward`` and has ``groups=1``, ``dilation=1`` and zero padding. Left out, because the
LoRA path would not match the layer: grouped (depthwise) convolutions, which peft cannot
merge; dilated ones and other padding modes, which peft's LoRA convolution ignores; conv
subclasses that change ``forward`` (timm's ``Conv2dSame``, ``StdConv2d``); and an
``nn.Linear`` inside ``nn.MultiheadAttention``, whose weight the attention reads directly.
"""

from __future__ import annotations

import re

from tlplug import OptionError, close_matches
from torch import nn

_REGEX_CHARS = set("*+?[](){}|^$\\")


def select_targets(backbone: nn.Module, targets: str) -> list[str]:
    """The paths (as in ``backbone.named_modules()``) of the layers ``targets`` selects.

    ``auto``: every such ``nn.Linear`` and ``nn.Conv2d`` except the first conv (the
    stem convolution or patch embedding, which sees the raw pixels); in a timm ViT these are
    each block's ``qkv``, ``proj``, ``fc1`` and ``fc2``. A value holding a regex character
    (``*+?[](){}|^$\\``) is a regex that must match a whole module path. Anything else is a
    comma-separated list of path suffixes (``qkv,fc2`` or ``attn.proj``), each of which
    must select at least one layer. Raises :class:`tlplug.OptionError` when nothing usable
    is selected.
    """
    modules = dict(backbone.named_modules())
    usable = [path for path, module in modules.items() if path and _adaptable(path, modules)]
    if targets == "auto":
        first_conv = next((p for p, m in modules.items() if isinstance(m, nn.Conv2d)), None)
        chosen = [
            p
            for p in usable
            if isinstance(modules[p], nn.Linear)
            or (isinstance(modules[p], nn.Conv2d) and p != first_conv)
        ]
        if not chosen:
            raise OptionError("lora targets=auto found no Linear or Conv2d layer to adapt")
        return chosen
    if _REGEX_CHARS & set(targets):
        return _by_regex(targets, modules, usable)
    return _by_suffixes(targets, modules, usable)


def _adaptable(path: str, modules: dict[str, nn.Module]) -> bool:
    """True for a layer peft can adapt and merge back (see the module docstring)."""
    module = modules[path]
    parent = modules[path.rpartition(".")[0]]
    if isinstance(module, nn.Conv2d):
        return (
            type(module).forward is nn.Conv2d.forward
            and module.groups == 1
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
        )
    return isinstance(module, nn.Linear) and not isinstance(parent, nn.MultiheadAttention)


def _by_regex(pattern: str, modules: dict[str, nn.Module], usable: list[str]) -> list[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise OptionError(f"lora targets {pattern!r} is not a valid regex ({exc})") from None
    matched = [p for p in modules if p and compiled.fullmatch(p)]
    chosen = [p for p in usable if compiled.fullmatch(p)]
    if not chosen:
        raise OptionError(
            f"lora targets regex {pattern!r} {_matched(matched, modules)}; "
            "it must match whole module paths such as " + ", ".join(usable[:2])
        )
    return chosen


def _by_suffixes(targets: str, modules: dict[str, nn.Module], usable: list[str]) -> list[str]:
    suffixes = [s.strip() for s in targets.split(",") if s.strip()]
    if not suffixes:
        raise OptionError("lora targets is empty; use auto, a list of layer names or a regex")
    chosen: set[str] = set()
    for suffix in suffixes:
        matched = [p for p in modules if p == suffix or p.endswith("." + suffix)]
        found = [p for p in usable if p in matched]
        if not found:
            leaves = sorted({p.rpartition(".")[2] for p in usable})
            hint = close_matches(suffix, leaves)
            also = f"did you mean '{hint[0]}'? " if hint else ""
            raise OptionError(
                f"lora target '{suffix}' {_matched(matched, modules)}; {also}"
                f"layers it can adapt end in {', '.join(leaves[:8])}"
            )
        chosen.update(found)
    return [p for p in usable if p in chosen]


def _matched(matched: list[str], modules: dict[str, nn.Module]) -> str:
    """Why a target selected nothing: no module at all, or only modules LoRA cannot take."""
    if not matched:
        return "matches no layer of the backbone"
    kinds = sorted({type(modules[p]).__name__ for p in matched})
    return (
        f"matches only layers lora cannot adapt ({', '.join(kinds)}, e.g. {matched[0]}); "
        "it takes Linear and plain ungrouped Conv2d layers"
    )
