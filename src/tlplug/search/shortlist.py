"""Which backbones a rank or a search scores: the ``--backbone`` values, patterns expanded as
``tlplug list backbones`` expands them, and with ``--top N`` only the N smallest.

Size is measured without weights or memory: each backbone is built on PyTorch's ``meta``
device (on the CPU, from random weights, when it cannot be built there), then counted:

- ``params``: its parameters;
- ``flops``: the floating-point operations of one image's forward pass at the recipe's image
  size (else the backbone's own), counted by ``torch.utils.flop_counter``: the estimate of
  speed, the same on every machine. The rank then times each one for real (images/s).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

from tlplug.console import Console
from tlplug.data.pipeline import image_size
from tlplug.errors import OptionError, TlplugError
from tlplug.model.transfer import count_params
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, expand_backbone, resolve
from tlplug.recipe import Recipe
from tlplug.search.rank import Candidate

MAX_WITHOUT_TOP = 16  # more candidates than this need --top
TopBy = Literal["params", "flops"]


def shortlist(
    host: PluginHost,
    given: list[str],
    recipe: Recipe,
    console: Console,
    top: int | None = None,
    by: TopBy = "params",
) -> list[Candidate]:
    """The candidates ``given`` names (``NAME``, ``NAME@WEIGHTS`` or a pattern), each once,
    in order; with ``top``, the ``top`` smallest ``by`` parameters or FLOPs."""
    registry = host.registry("backbones")
    found: list[Candidate] = []
    for text in given:
        candidate = Candidate.parse(text)
        names = expand_backbone(registry, candidate.backbone)
        if candidate.weights and names != [candidate.backbone]:
            raise OptionError(
                f"--backbone {text}: a weights file belongs to one backbone, not to the "
                f"{len(names)} that '{candidate.backbone}' matches; name the backbone"
            )
        found += [attrs.evolve(candidate, backbone=name) for name in names]
    found = list(dict.fromkeys(found))
    if top is not None and top < 1:
        raise OptionError(f"--top must be at least 1, not {top}")
    if top is None:
        if len(found) > MAX_WITHOUT_TOP:
            raise OptionError(
                f"--backbone matches {len(found)} backbones, each a forward pass over the data; "
                f"add --top N to rank the N smallest (--top-by params|flops), or narrow it"
            )
        return found
    if top >= len(found):
        return found
    console.say(f"rank: sizing {len(found)} backbones by {by} to keep {top}")
    sizes = {c: size_of(host, recipe, c.backbone, by) for c in found}
    for candidate, size in sizes.items():
        if size is None:
            console.say(f"  left out {candidate.label}: it could not be built to measure")
    kept = sorted((c for c in found if sizes[c] is not None), key=lambda c: sizes[c])[:top]
    if not kept:
        raise TlplugError("no backbone could be built to measure its size; name them one by one")
    return kept


def size_of(host: PluginHost, recipe: Recipe, backbone: str, by: TopBy) -> float | None:
    """Parameters, or FLOPs of one image's forward pass, of ``backbone`` (random weights);
    None when it cannot be built."""
    chosen = attrs.evolve(recipe, backbone=backbone, weights=None, pretrained=False)
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                built, _ = build_backbone(resolve(host, chosen)["backbones"], chosen)
                if by == "params":
                    return float(count_params(list(built.module.parameters())))
                return _flops(built.module, image_size(recipe.img_size, None, built.data_config))
        except Exception:  # a model the meta device cannot build is tried on the CPU
            continue
    return None


def _flops(module: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())
