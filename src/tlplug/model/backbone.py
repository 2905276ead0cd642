"""What a backbone provider hands the engine: a feature extractor with its layer groups.

Providers (timm, torchvision, or a plugin's) build the network, drop its classifier and
describe it with a :class:`Backbone`. The helpers below turn an architecture's own
structure into ordered :class:`LayerGroup` lists, so every provider follows the same rules:
groups run stem to top, and every parameter is in exactly one group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from torch import nn

# Group names a backbone must not use: the engine's head group, and the first group's name.
RESERVED_NAMES = frozenset({"head", "stem"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_INIT = "random init"  # Backbone.weights of a backbone built without weights


@attrs.frozen
class DataConfig:
    """How images must look for this backbone: its pretrained preprocessing."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def to_json(self) -> dict:
        """Return the config as a JSON-ready dict."""
        return attrs.asdict(self)


@attrs.frozen
class LayerGroup:
    """A named set of parameters that is frozen or trained as one unit."""

    name: str
    params: tuple[str, ...]


@attrs.define
class Backbone:
    """A feature extractor ``(batch, 3, H, W) -> (batch, num_features)`` and how to train it.

    ``module`` is the provider's own model with its classifier removed, so its state-dict
    keys are the provider's own. ``groups`` are ordered stem to top and cover every
    parameter of ``module`` exactly once. ``classifier`` names the state-dict prefixes of
    the removed classifier, which a weights file may hold and loading ignores.
    ``pretrained`` says whether the weights were trained (True) or initialised at random
    (False); ``weights`` is one line for people on where they came from. A provider that
    leaves ``pretrained`` unset (None) is read by its ``weights`` line:
    :data:`RANDOM_INIT` for random weights, anything else for trained ones.
    """

    module: nn.Module
    num_features: int
    groups: list[LayerGroup]
    data_config: DataConfig
    classifier: tuple[str, ...] = ()
    weights: str = RANDOM_INIT
    pretrained: bool | None = None

    @property
    def trained(self) -> bool:
        """Whether the weights were trained rather than initialised at random."""
        return self.pretrained if self.pretrained is not None else self.weights != RANDOM_INIT


class BackboneProvider(Protocol):
    """What a plugin registers with ``tlplug_register_backbones``."""

    def list_models(self, pattern: str | None = None) -> list[str]:
        """Model names this provider can build, filtered by a shell-style pattern."""

    def describe(self, model: str) -> str:
        """One line about ``model`` for ``tlplug list backbones``."""

    def create(self, model: str, pretrained: bool, img_size: int | None) -> Backbone:
        """Build ``model``; keyword-only parameters added here are the provider's options."""


def groups_by_prefix(
    model: nn.Module, spec: Sequence[tuple[str, Iterable[str]]]
) -> list[LayerGroup]:
    """Group ``model``'s parameters by module-path prefixes, in order.

    ``spec`` lists ``(group name, prefixes)`` stem to top. A parameter joins the group
    with the longest matching prefix; a parameter no prefix matches joins the group of the
    parameter registered just before it (the first group if there is none), which is
    where final norms and stray tokens belong.
    """
    owner = {}
    for index, (_, prefixes) in enumerate(spec):
        for prefix in prefixes:
            owner[prefix] = index
    members: list[list[str]] = [[] for _ in spec]
    previous = 0
    for name, _ in model.named_parameters():
        index = _longest_prefix(name, owner)
        if index is None:
            index = previous
        members[index].append(name)
        previous = index
    return [
        LayerGroup(group_name, tuple(names))
        for (group_name, _), names in zip(spec, members, strict=True)
        if names
    ]


def groups_from_lists(param_lists: Sequence[Sequence[str]]) -> list[LayerGroup]:
    """Name ordered lists of parameter names: ``stem`` first, then by the modules they hold.

    A group is named by the shortest module paths that hold its parameters and no other
    group's (``layer3`` for all of ``layer3.0.*``, ``blocks.11+norm`` for a last block that
    took the final norm along).
    """
    groups: list[LayerGroup] = []
    taken: set[str] = set()
    named = module_paths(param_lists, skip=RESERVED_NAMES)
    for index, (names, paths) in enumerate(zip(param_lists, named, strict=True)):
        name = "stem" if index == 0 else "+".join(paths)
        while name in taken:
            name = f"{name}_{index}"
        taken.add(name)
        groups.append(LayerGroup(name, tuple(names)))
    return groups


def module_paths(
    param_lists: Sequence[Sequence[str]], skip: frozenset[str] = frozenset()
) -> list[list[str]]:
    """For each list of parameter names, the shortest module paths (other than ``skip``)
    that hold its parameters and none of the other lists': the modules a group is made of."""
    owners: dict[str, set[int]] = {}
    for index, names in enumerate(param_lists):
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                owners.setdefault(".".join(parts[:depth]), set()).add(index)
    found = []
    for index, names in enumerate(param_lists):
        paths: list[str] = []
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if owners[prefix] == {index} and prefix not in skip:
                    if prefix not in paths:
                        paths.append(prefix)
                    break
        found.append(paths)
    return found


def groups_from_children(model: nn.Module) -> list[LayerGroup]:
    """Generic grouping for an architecture with no grouping of its own.

    Each top-level child holding parameters is a group, except a container (Sequential,
    ModuleList) that holds most of the parameters, which is the stage list: each of its
    children becomes a group. The model's own direct parameters join the first group.
    """
    total = sum(p.numel() for p in model.parameters())
    lists: list[list[str]] = []
    for name, child in model.named_children():
        members = [c for c in child.named_children() if has_params(c[1])]
        share = sum(p.numel() for p in child.parameters()) / max(1, total)
        if _is_container(child) and len(members) > 1 and share > 0.5:
            for sub, module in members:
                lists.append([f"{name}.{sub}.{n}" for n, _ in module.named_parameters()])
        elif has_params(child):
            lists.append([f"{name}.{n}" for n, _ in child.named_parameters()])
    own = [n for n, _ in model.named_parameters(recurse=False)]
    if own:
        lists = [own + (lists[0] if lists else []), *lists[1:]]
    return groups_from_lists(lists)


def fold_norm_groups(model: nn.Module, groups: Sequence[LayerGroup]) -> list[LayerGroup]:
    """Fold each group that holds only norm layers (a final LayerNorm, ``norm5``) into the
    group before it: a norm is part of the stage whose output it normalizes."""
    folded: list[LayerGroup] = []
    for group in groups:
        if folded and all(_is_norm(model, name) for name in group.params):
            last = folded.pop()
            group = LayerGroup(f"{last.name}+{group.name}", last.params + group.params)
        folded.append(group)
    return folded


def merge_groups(groups: Sequence[LayerGroup], count: int) -> list[LayerGroup]:
    """Merge neighbouring groups into at most ``count``: the stem alone, the rest in
    ``count - 1`` runs of near-equal length (``blocks.0..blocks.3``)."""
    if len(groups) <= count:
        return list(groups)
    if count == 1:
        return [LayerGroup("backbone", tuple(p for g in groups for p in g.params))]
    rest = groups[1:]
    runs, extra = divmod(len(rest), count - 1)
    merged, start = [groups[0]], 0
    for index in range(count - 1):
        end = start + runs + (1 if index < extra else 0)
        chunk = rest[start:end]
        name = chunk[0].name if len(chunk) == 1 else f"{chunk[0].name}..{chunk[-1].name}"
        merged.append(LayerGroup(name, tuple(p for g in chunk for p in g.params)))
        start = end
    return merged


def _is_norm(model: nn.Module, param_name: str) -> bool:
    module = model.get_submodule(param_name.rpartition(".")[0])
    return "norm" in type(module).__name__.lower()


def _is_container(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, (nn.Sequential, nn.ModuleList))


def has_params(module: nn.Module) -> bool:
    """True when ``module`` or a submodule holds a parameter."""
    return next(module.parameters(), None) is not None


def check_groups(model: nn.Module, groups: Sequence[LayerGroup]) -> None:
    """Raise ``ValueError`` unless every parameter of ``model`` is in exactly one, uniquely
    named group."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names) or "head" in names:
        raise ValueError(f"group names must be unique and not 'head', got {', '.join(names)}")
    seen: dict[str, str] = {}
    for group in groups:
        for name in group.params:
            if name in seen:
                raise ValueError(f"parameter {name} is in groups {seen[name]} and {group.name}")
            seen[name] = group.name
    missing = [n for n, _ in model.named_parameters() if n not in seen]
    if missing:
        raise ValueError(f"parameters in no group: {', '.join(missing[:5])}")


def _longest_prefix(name: str, owner: dict[str, int]) -> int | None:
    best, best_len = None, -1
    for prefix, index in owner.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = index, len(prefix)
    return best
